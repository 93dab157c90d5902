"""Evaluates the bound of a trained run on the test split it was trained beside.

  python -m experiments.evaluate --workdir=runs/mnist

Prints the bound with its standard error, as -(K - L_null) in bits per unit
(the paper's Table 1) and, for images with bin-wide dequantisation, as the
NLL bound in bits/dim on 8-bit data, and writes
<workdir>/eval_<method>_test.json (all_t also kl_per_t_test.png / .npz;
--parzen_samples also eval_parzen_test.json). It never writes eval.json,
the final report of the Table 1 experiments (bound on fresh data).

The default method, stratified, takes seconds; all_t (every t for every
example, exact over t) takes minutes and shows its progress. A run trained
on data that cannot be read again (arrays given from Python, or files that
changed) is an error, not an evaluation on other data.
"""

import os
import time

from absl import flags

from . import launch
from dpm_jax import errors

SPLIT = "test"


def define(values: flags.FlagValues, argv) -> None:
  del argv
  launch.define_run_flags(values)
  flags.DEFINE_enum("method", "stratified", ["stratified", "all_t", "one_t"],
                    "stratified: one random t in each of --num_strata strata per example "
                    "(unbiased, seconds); all_t: every t for each example (exact over t, "
                    "minutes); one_t: the reference code's one t per batch.", flag_values=values)
  flags.DEFINE_integer("num_images", 0, "Test examples to use (0: all).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("num_strata", None, "Strata for --method=stratified, at most T-1 "
                       "(default: the run's config.eval.num_strata).", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("num_batches", 200, "Batches for --method=one_t.", lower_bound=2,
                       flag_values=values)
  flags.DEFINE_integer("batch_size", 100, "Examples per network call.", lower_bound=1,
                       flag_values=values)
  flags.DEFINE_integer("parzen_samples", 0, "> 0: also the Parzen-window log likelihood of this "
                       "many samples (the paper's MNIST metric; it used 10000).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("parzen_validation", 1000, "Training examples held out to choose the "
                       "window.", lower_bound=1, flag_values=values)


def main(values: flags.FlagValues) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import evaluate, outputs, plotting  # pylint: disable=g-import-not-at-top
  launch.use_cpu_devices(values, values.batch_size)
  run, task = launch.open_run(values)
  cfg, exp, workdir = run.config, task.experiment, values.workdir
  T = cfg.model.trajectory_length
  num_strata = values.num_strata or cfg.eval.num_strata
  if values.method == "stratified" and num_strata > T - 1:
    raise errors.UserError(f"--num_strata={num_strata} exceeds the run's {T - 1} time steps "
                            "t = 1..T-1.")
  if values.parzen_samples and values.parzen_validation > len(task.train):
    raise errors.UserError(f"--parzen_validation={values.parzen_validation} exceeds the run's "
                            f"{len(task.train)} training examples.")
  test = task.test[:values.num_images] if values.num_images else task.test
  key = jax.random.key(values.seed)
  start = time.time()

  def bound(should_stop):
    if values.method == "all_t":
      return evaluate.bound_all_t(task, run.params, test, key, batch_size=values.batch_size,
                                  progress=progress_printer(time.time()), should_stop=should_stop)
    if values.method == "stratified":
      return evaluate.bound_stratified(task, run.params, test, key, num_strata=num_strata,
                                       batch_size=values.batch_size, should_stop=should_stop)
    return evaluate.bound_one_t(task, run.params, test, key, num_batches=values.num_batches,
                                batch_size=values.batch_size, should_stop=should_stop)

  result = launch.run_stoppable("the evaluation", bound)
  report = evaluate.report(result)
  report.update(method=values.method, step=run.step, seconds=time.time() - start,
                experiment=exp.name, source=SPLIT, data=run.data)
  evaluate.check_finite(report, f"The {values.method} bound of step {run.step}")
  unit = result["unit"]
  print(f"step {run.step}, {result['num_images']} {SPLIT} examples, method {values.method}:\n"
        f"  -(K - L_null) = {result['neg_K_minus_L_null_bits_per_' + unit]:.4f} "
        f"+- {result['neg_K_minus_L_null_stderr']:.4f} bits/{unit} "
        f"(K - L_null = {result['K_minus_L_null_bits']:.4f}, the paper's Table 1 column; "
        f"K = {result['K_bits']:.4f}, L_null = {result['L_null_bits']:.4f})"
        + exp.eval_summary(result).replace("; ", "\n  ", 1))
  written = [outputs.write_json(os.path.join(workdir, f"eval_{values.method}_{SPLIT}.json"),
                                report)]
  if values.method == "all_t":
    written.append(outputs.save_npz(os.path.join(workdir, f"kl_per_t_{SPLIT}.npz"),
                                    t=result["t"], kl=result["kl_per_t"]))
    plotting.plot_kl_per_t(result["t"], result["kl_per_t"],
                           os.path.join(workdir, f"kl_per_t_{SPLIT}.png"))
  if values.parzen_samples:
    parzen = launch.run_stoppable("the Parzen estimate", lambda should_stop: parzen_window(
        task, run, test, key, values, should_stop))
    print(f"  Parzen window (sigma {parzen['sigma']:.3f} chosen on {values.parzen_validation} "
          f"held-out training examples, {parzen['num_samples']} samples): "
          f"{parzen['test_bits']:.1f} +- {parzen['test_bits_stderr']:.1f} bits per example "
          f"({parzen['test_nats']:.1f} nats)")
    written.append(outputs.write_json(os.path.join(workdir, f"eval_parzen_{SPLIT}.json"),
                                      {**parzen, "step": run.step, "experiment": exp.name,
                                       "source": SPLIT}))
  print("wrote " + ", ".join(written))


def parzen_window(task, run, test, key, values, should_stop) -> dict:
  """The Parzen-window log likelihood of samples on the test examples (output units)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import evaluate, outputs, sampling  # pylint: disable=g-import-not-at-top
  exp, stats = task.experiment, task.stats
  sample = sampling.make_sampler(task.model, num_images=min(values.parzen_samples, 500),
                                 skip_first_step=run.config.sample.skip_first_step)
  chunks = []
  while sum(len(c) for c in chunks) < values.parzen_samples:
    draws = sample(run.params, jax.random.fold_in(key, 1000 + len(chunks)),
                   should_stop=should_stop)
    chunks.append(exp.to_output_units(np.asarray(draws), stats))
  samples = np.concatenate(chunks)[:values.parzen_samples]
  outputs.require_finite("the Parzen window's samples", samples=samples)
  to_output = lambda x: exp.to_output_units(np.asarray(task.prepare(x)), stats)
  return evaluate.parzen_select_and_score(samples, to_output(task.train[-values.parzen_validation:]),
                                          to_output(test))


def progress_printer(start: float):
  """progress(done, total): one line a batch with the elapsed time and an ETA."""

  def progress(done, total):
    elapsed = time.time() - start
    eta = elapsed / done * (total - done)
    print(f"  batch {done}/{total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)
  return progress


PROGRAM = launch.Program("experiments.evaluate", __doc__, define, main)


def run() -> None:
  PROGRAM.cli()


if __name__ == "__main__":
  run()
