"""One command for an accelerator: what a GPU or TPU does with this model, on whatever
backend JAX finds.

  python -m benchmarks.accelerator           # about 10 minutes on one GPU
  python -m benchmarks.accelerator --quick   # seconds on a CPU (the tests run it)

It runs the benchmark's JAX rows with XLA's convolution (benchmarks.run), trains the
MNIST model with the reference recipe for 2000 steps on the embedded digits, evaluates
the trained model's stratified and all-t bounds at 'highest' and at 'default' matmul
precision side by side (a TPU's default is one bfloat16 pass, a recent GPU's TF32), and
writes a sample grid. Results: benchmarks/accelerator.json and accelerator.md from a
checkout (the figures the repository keeps), else runs/accelerator.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

from dpm_jax import evaluate
from dpm_jax import images
from dpm_jax import outputs
from dpm_jax import registry
from dpm_jax import train

from . import output_path, run as bench_run, shipped_config

PRECISIONS = ("highest", "default")


def bounds(workdir: str, quick: bool) -> list:
  """The trained run's stratified and all-t test bounds at each precision: rows of
  (method, precision, examples, bits/pixel, standard error, seconds)."""
  run, task = registry.open_task(workdir)
  rows = []
  for method, num in (("stratified", 16 if quick else 1000), ("all_t", 8 if quick else 200)):
    ev = run.config.eval.copy_and_resolve_references()
    ev.update(method=method, num_images=num, batch_size=min(ev.batch_size, num))
    examples = evaluate.test_examples(task.data.test, num, ev.batch_size, ev.seed)
    for precision in PRECISIONS:
      with jax.default_matmul_precision(precision):
        start = time.time()
        result = evaluate.bound(task, run.params, examples, jax.random.key(0), ev)
      rows.append(dict(method=method, precision=precision, examples=num,
                       bits_per_pixel=result["neg_K_minus_L_null_bits_per_pixel"],
                       stderr=result["neg_K_minus_L_null_stderr"],
                       seconds=time.time() - start))
  return rows


def markdown(results: dict) -> str:
  t = results["training"]
  lines = [f"Device: {results['device']} ({results['backend']}, {results['device_count']} "
           f"device(s)), JAX {results['jax']}.", "",
           f"Training: {t['steps']} steps of the MNIST recipe (batch {t['batch_size']}) in "
           f"{t['seconds']:.0f} s, {t['steps'] * t['batch_size'] / t['seconds']:.0f} images/s "
           f"with compilation; samples: `{t['samples']}`.", "",
           "| bound | matmul precision | test examples | -(K - L_null), bits/pixel | seconds |",
           "|---|---|---|---|---|"]
  for r in results["bounds"]:
    lines.append(f"| {r['method']} | {r['precision']} | {r['examples']} | "
                 f"{r['bits_per_pixel']:.4f} +- {r['stderr']:.4f} | {r['seconds']:.1f} |")
  return "\n".join(lines + ["", results["benchmark"]["markdown"]]) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="the tiny model, a few steps")
  parser.add_argument("--workdir", default=os.path.join("runs", "accelerator"),
                      help="the training run's directory (a rerun resumes it)")
  parser.add_argument("--output", default=None, help="the JSON; the table goes beside it "
                      "(.md); default: benchmarks/accelerator.json in a checkout")
  args = parser.parse_args(argv)
  output = args.output or (os.path.join("runs", "accelerator_quick.json") if args.quick
                           else output_path("accelerator.json", "accelerator.json"))
  bench = bench_run.main(["--models=mnist", "--impls=xla", "--devices=all", "--no_torch",
                          f"--output={os.path.splitext(output)[0]}_benchmark.json"]
                         + (["--quick"] if args.quick else []))
  config = shipped_config("mnist", "tiny" if args.quick else "")
  steps = config.train.num_steps if args.quick else 2000
  config.train.update(num_steps=steps, eval_every_steps=steps, sample_every_steps=steps)
  start = time.time()
  train.train_and_evaluate(images.MNIST, config, args.workdir)
  results = dict(
      backend=jax.default_backend(), device=jax.devices()[0].device_kind,
      device_count=jax.device_count(), jax=jax.__version__, quick=args.quick,
      training=dict(steps=steps, batch_size=config.train.batch_size,
                    seconds=time.time() - start,
                    samples=os.path.join(args.workdir, "samples", f"step_{steps:08d}.png")),
      bounds=bounds(args.workdir, args.quick), benchmark=bench)
  results["markdown"] = markdown(results)
  outputs.write_json(output, results)
  outputs.write_text(os.path.splitext(output)[0] + ".md", results["markdown"])
  print(results["markdown"] + f"\nwrote {output} and its .md")
  return results


if __name__ == "__main__":
  main()
