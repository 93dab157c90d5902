"""Evaluates the bound of a trained run on the test split it was trained beside.

  python -m experiments.evaluate --workdir=runs/mnist

Prints -(K - L_null) in bits per unit (the paper's Table 1) and, for images, the
NLL bound in bits/dim; writes eval_<method>_test.json into --output (default: the
run directory; a read-only run needs another folder). The settings
default to the run's config.eval, so that on the same checkpoint it gives
training's test bound; the flags override them.
"""

import time

from absl import flags

from . import common


def define(values: flags.FlagValues, argv) -> None:
  del argv
  common.define_run_flags(values, None, "The draws' seed (default: the run's own evaluation "
                          "draws, as training's test bound).")
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
  flags.DEFINE_string("output", None, "Folder for the results (default: the run directory).",
                      flag_values=values)
  flags.DEFINE_integer("parzen_samples", 0, "> 0: also the Parzen-window log likelihood of this "
                       "many samples (the paper's MNIST metric; it used 10000).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("parzen_validation", 1000, "Training examples held out to choose the "
                       "window.", lower_bound=1, flag_values=values)


def main(values: flags.FlagValues) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  from dpm_jax import evaluate, execution, outputs, registry, safety, train  # pylint: disable=g-import-not-at-top
  common.show_cpu_devices(values)  # one per core; each batch splits over those dividing it
  output = outputs.writable_folder("the results' folder", values.output or values.workdir,
                                   "write them elsewhere with --output=FOLDER")
  run, task = registry.open_task(values.workdir, values.step, params=values.params)
  ev = run.config.eval.copy_and_resolve_references()
  for name in ("method", "num_images", "num_strata", "num_batches", "batch_size"):
    if values[name].value is not None:
      ev[name] = values[name].value
  ev.batch_size = min(ev.batch_size, ev.num_images or len(task.data.test), len(task.data.test))
  key = train.run_keys(run.config.seed).eval if values.seed is None else jax.random.key(values.seed)
  start = time.time()

  def progress(done, total):  # all_t: one line a batch
    elapsed = time.time() - start
    print(f"  batch {done}/{total}, {elapsed:.0f} s elapsed, "
          f"ETA {elapsed / done * (total - done):.0f} s", flush=True)

  with execution.matmul_precision(run.config.compute):
    r = safety.stoppable("the evaluation", lambda should_stop: evaluate.evaluate_run(
        task, run, ev, key, parzen_samples=values.parzen_samples,
        parzen_validation=values.parzen_validation, output_dir=output, progress=progress,
        should_stop=should_stop))
  print(evaluate.describe(r, task.units))


def run(argv) -> int:
  return common.run(__doc__, define, main, argv)


if __name__ == "__main__":
  common.cli(run)
