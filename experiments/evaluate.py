"""Evaluates the bound of a trained run on its test split.

  python -m experiments.evaluate --workdir=runs/mnist

Prints the bound with its standard error, as -(K - L_null) in bits/pixel
(the paper's Table 1) and as the NLL bound in bits/dim on 8-bit data, and
writes <workdir>/eval_<method>.json and a copy as <workdir>/eval.json (the
latest), plus kl_per_t.png / .npz for --method=all_t.

The default method, stratified, takes seconds; all_t (every t for every image,
exact over t) takes minutes and shows its progress.
"""

import os
import time

from absl import app
from absl import flags

from experiments import launch

flags.DEFINE_string("workdir", None, "Run directory made by the training entry point.", required=True)
flags.DEFINE_enum("method", "stratified", ["stratified", "all_t", "one_t"],
                  "stratified: one random t in each of --num_strata strata per image "
                  "(unbiased, seconds); all_t: every t for each image (exact over t, "
                  "minutes); one_t: the reference code's one t per batch.")
flags.DEFINE_integer("num_images", 0, "Test images to use (0: all).", lower_bound=0)
flags.DEFINE_integer("num_strata", None, "Strata for --method=stratified (default: the run's "
                     "config.eval.num_strata).", lower_bound=1)
flags.DEFINE_integer("num_batches", 200, "Batches for --method=one_t.", lower_bound=2)
flags.DEFINE_integer("batch_size", 100, "Images per network call.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Evaluation seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", lower_bound=0)
flags.DEFINE_integer("parzen_samples", 0, "> 0: also the Parzen-window log likelihood of this many "
                     "samples (the paper's MNIST metric; it used 10000).", lower_bound=0)
flags.DEFINE_integer("parzen_validation", 1000, "Training images held out to choose the window.",
                     lower_bound=1)
launch.define_cpu_devices_flag()
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from dpm_jax import data, evaluate, plotting, rundir, sampling  # pylint: disable=g-import-not-at-top
  launch.use_cpu_devices(FLAGS.batch_size)
  run, task = launch.open_run(FLAGS.workdir, FLAGS.step)
  cfg = run.config
  test = task.test[:FLAGS.num_images] if FLAGS.num_images else task.test
  key = jax.random.key(FLAGS.seed)
  start = time.time()
  if FLAGS.method == "all_t":
    result = evaluate.bound_all_t(task, run.params, test, key, batch_size=FLAGS.batch_size,
                                  progress=progress_printer(time.time()))
    np.savez(os.path.join(FLAGS.workdir, "kl_per_t.npz"), t=result["t"], kl=result["kl_per_t"])
    plotting.plot_kl_per_t(result["t"], result["kl_per_t"], os.path.join(FLAGS.workdir, "kl_per_t.png"))
  elif FLAGS.method == "stratified":
    num_strata = FLAGS.num_strata or cfg.eval.num_strata
    if num_strata > cfg.model.trajectory_length - 1:
      launch.fail(f"--num_strata={num_strata} exceeds the run's {cfg.model.trajectory_length - 1} "
                  "time steps t = 1..T-1.")
    result = evaluate.bound_stratified(task, run.params, test, key,
                                       num_strata=num_strata, batch_size=FLAGS.batch_size)
  else:
    result = evaluate.bound_one_t(task, run.params, test, key,
                                  num_batches=FLAGS.num_batches, batch_size=FLAGS.batch_size)
  report = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
  report.update(method=FLAGS.method, step=run.step, seconds=time.time() - start,
                dataset=cfg.data.dataset, source=cfg.data.source)
  unit = result["unit"]
  print(f"step {run.step}, {result['num_images']} test examples, method {FLAGS.method}:\n"
        f"  -(K - L_null) = {result['neg_K_minus_L_null_bits_per_' + unit]:.4f} "
        f"+- {result['neg_K_minus_L_null_stderr']:.4f} bits/{unit} "
        f"(K - L_null = {result['K_minus_L_null_bits']:.4f}, the paper's Table 1 column; "
        f"K = {result['K_bits']:.4f}, L_null = {result['L_null_bits']:.4f})")
  if "nll_bpd" in result:
    print(f"  NLL bound = {result['nll_bpd']:.4f} +- {result['nll_bpd_stderr']:.4f} "
          f"bits/dim on 8-bit data")
  if FLAGS.parzen_samples:
    sample = sampling.make_sampler(task.model, num_images=min(FLAGS.parzen_samples, 500),
                                   skip_first_step=cfg.sample.skip_first_step)
    stats = data.DataStats.from_dict(run.stats)
    chunks, i = [], 0
    while sum(len(c) for c in chunks) < FLAGS.parzen_samples:
      chunks.append(data.to_pixels(sample(run.params, jax.random.fold_in(key, 1000 + i)), stats))
      i += 1
    samples = np.concatenate(chunks)[:FLAGS.parzen_samples]
    validation = task.train[-FLAGS.parzen_validation:] / 255.0
    parzen = evaluate.parzen_select_and_score(samples, validation, test / 255.0)
    report["parzen"] = parzen
    print(f"  Parzen window (sigma {parzen['sigma']:.3f} chosen on {len(validation)} held-out "
          f"training images, {len(samples)} samples): {parzen['test_bits']:.1f} "
          f"+- {parzen['test_bits_stderr']:.1f} bits per image "
          f"({parzen['test_nats']:.1f} nats)")
  path = os.path.join(FLAGS.workdir, f"eval_{FLAGS.method}.json")
  for name in (path, os.path.join(FLAGS.workdir, "eval.json")):
    rundir.write_json(name, report)
  print(f"wrote {path} (and eval.json, the latest)")


def progress_printer(start: float):
  """progress(done, total): one line a batch with the elapsed time and an ETA."""

  def progress(done, total):
    elapsed = time.time() - start
    eta = elapsed / done * (total - done)
    print(f"  batch {done}/{total}, {elapsed:.0f} s elapsed, ETA {eta:.0f} s", flush=True)
  return progress


def run() -> None:
  launch.app_run(main)


if __name__ == "__main__":
  run()
