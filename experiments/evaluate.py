"""Evaluates the bound of a trained run on the test split it was trained beside.

  python -m experiments.evaluate --workdir=runs/mnist

Prints the bound with its standard error, as -(K - L_null) in bits per unit
(the paper's Table 1) and, for images with bin-wide dequantisation, as the
NLL bound in bits/dim on 8-bit data, and writes
<workdir>/eval_<method>_test.json (all_t also kl_per_t_test.png / .npz;
--parzen_samples also eval_parzen_test.json). It never writes eval.json,
the final report of the Table 1 experiments (bound on fresh data).

Its settings default to the run's config.eval (the periodic test bound of
training), so that on the same checkpoint both give the same number; the
flags override them. The stratified method takes seconds; all_t (every t for
every example, exact over t) takes minutes and shows its progress. A run trained
on data that cannot be read again (arrays given from Python, or files that
changed) is an error, not an evaluation on other data.
"""

import os
import time

from absl import flags

from dpm_jax import errors
from . import common

SPLIT = "test"


def define(values: flags.FlagValues, argv) -> None:
  del argv
  common.define_run_flags(values)
  values["seed"].default, values["seed"].help = None, (
      "The draws' seed (default: the run's own evaluation draws, as training's test bound).")
  flags.DEFINE_enum("method", None, ["stratified", "all_t", "one_t"],
                    "stratified: one random t in each of --num_strata strata per example "
                    "(unbiased, seconds); all_t: every t for each example (exact over t, "
                    "minutes); one_t: the reference code's one t per batch (default: the run's "
                    "config.eval.method).", flag_values=values)
  for name, lower, what in (("num_images", 0, "Test examples to use (0: all)"),
                            ("num_strata", 1, "Strata for --method=stratified, at most T-1"),
                            ("num_batches", 2, "Batches for --method=one_t"),
                            ("batch_size", 1, "Examples per network call")):
    flags.DEFINE_integer(name, None, f"{what} (default: the run's config.eval.{name}).",
                         lower_bound=lower, flag_values=values)
  flags.DEFINE_integer("parzen_samples", 0, "> 0: also the Parzen-window log likelihood of this "
                       "many samples (the paper's MNIST metric; it used 10000).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("parzen_validation", 1000, "Training examples held out to choose the "
                       "window.", lower_bound=1, flag_values=values)


def main(values: flags.FlagValues) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from dpm_jax import evaluate, outputs, plotting, train  # pylint: disable=g-import-not-at-top
  common.show_cpu_devices(values, values.batch_size or 1)
  run, task = common.open_run(values)
  cfg, exp, workdir = run.config, task.experiment, values.workdir
  ev = cfg.eval.copy_and_resolve_references()
  for name in ("method", "num_images", "num_strata", "num_batches", "batch_size"):
    if values[name].value is not None:
      ev[name] = values[name].value
  T = cfg.model.trajectory_length
  if ev.method == "stratified" and ev.num_strata > T - 1:
    raise errors.UserError(f"--num_strata={ev.num_strata} exceeds the run's {T - 1} time steps "
                           "t = 1..T-1.")
  if values.parzen_samples and values.parzen_validation > len(task.data.train):
    raise errors.UserError(f"--parzen_validation={values.parzen_validation} exceeds the run's "
                           f"{len(task.data.train)} training examples.")
  batch_size = min(ev.batch_size, len(task.data.test))
  test = evaluate.test_examples(task.data.test, ev.num_images, batch_size, ev.seed)
  key = (train.run_keys(cfg.seed).eval if values.seed is None else jax.random.key(values.seed))
  start = time.time()

  def bound(should_stop):
    if ev.method == "all_t":
      return evaluate.bound_all_t(task, run.params, test, key, batch_size=batch_size,
                                  progress=progress_printer(time.time()), should_stop=should_stop)
    if ev.method == "stratified":
      return evaluate.bound_stratified(task, run.params, test, key, num_strata=ev.num_strata,
                                       batch_size=batch_size, should_stop=should_stop)
    return evaluate.bound_one_t(task, run.params, test, key, num_batches=ev.num_batches,
                                batch_size=batch_size, seed=ev.seed, should_stop=should_stop)

  result = common.run_stoppable("the evaluation", bound)
  report = evaluate.report(result)
  report.update(method=ev.method, step=run.step, seconds=time.time() - start,
                experiment=exp.name, source=SPLIT, data=run.data)
  evaluate.check_finite(report, f"The {ev.method} bound of step {run.step}")
  unit = result["unit"]
  print(f"step {run.step}, {result['num_images']} {SPLIT} examples, method {ev.method}"
        + (f", {ev.num_strata} strata" if ev.method == "stratified" else "") + ":\n"
        f"  -(K - L_null) = {result['neg_K_minus_L_null_bits_per_' + unit]:.4f} "
        f"+- {result['neg_K_minus_L_null_stderr']:.4f} bits/{unit} "
        f"(K - L_null = {result['K_minus_L_null_bits']:.4f}, the paper's Table 1 column; "
        f"K = {result['K_bits']:.4f}, L_null = {result['L_null_bits']:.4f})"
        + task.units.summary(result).replace("; ", "\n  ", 1))
  written = [outputs.write_json(os.path.join(workdir, f"eval_{ev.method}_{SPLIT}.json"),
                                report)]
  if ev.method == "all_t":
    written.append(outputs.save_npz(os.path.join(workdir, f"kl_per_t_{SPLIT}.npz"),
                                    t=result["t"], kl=result["kl_per_t"]))
    plotting.plot_kl_per_t(result["t"], result["kl_per_t"],
                           os.path.join(workdir, f"kl_per_t_{SPLIT}.png"))
  if values.parzen_samples:
    parzen = common.run_stoppable("the Parzen estimate", lambda should_stop: parzen_window(
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
  units = task.units
  sample = sampling.make_sampler(task.model, num_images=min(values.parzen_samples, 500),
                                 skip_first_step=run.config.sample.skip_first_step)
  chunks = []
  while sum(len(c) for c in chunks) < values.parzen_samples:
    draws = sample(run.params, jax.random.fold_in(key, 1000 + len(chunks)),
                   should_stop=should_stop)
    chunks.append(units.to_output(np.asarray(draws)))
  samples = np.concatenate(chunks)[:values.parzen_samples]
  outputs.require_finite("the Parzen window's samples", samples=samples)
  to_output = lambda x: units.to_output(np.asarray(units.to_model(x)))
  return evaluate.parzen_select_and_score(
      samples, to_output(task.data.train[-values.parzen_validation:]), to_output(test))


def progress_printer(start: float):
  """progress(done, total): one line a batch with the elapsed time and an ETA."""

  def progress(done, total):
    elapsed = time.time() - start
    eta = elapsed / done * (total - done)
    print(f"  batch {done}/{total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)
  return progress


def run(argv) -> int:
  return common.run(__doc__, define, main, argv)


if __name__ == "__main__":
  common.cli(run)
