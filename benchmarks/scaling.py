"""How cost grows: training against batch and image size, sampling against the number
of images, the all-t bound against T. One process, every CPU device (one per core)
splitting each batch.

  python -m benchmarks.scaling                 # writes benchmarks/scaling.json and scaling.png
  python -m benchmarks.scaling --quick         # a smoke run (small sizes), runs/scaling_quick.json

Training: images/s of the training loop's jitted step (median of a few steps after
a warm-up) and XLA's memory for it (arguments, outputs and temporaries of the
compiled step, MiB), for batch sizes 64 .. 1024 and three models: the MNIST model
(28x28x1), the CIFAR-10 model (32x32x3), and the convolution-only model of the
dead leaves experiment at 64x64x1. Sampling: images/s of the full reverse
trajectory of the MNIST model against the number of images. Evaluation: seconds
per image of the bound exact over t (dpm_jax.evaluate.bound_all_t) of the MNIST
model against T.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from dpm_jax import execution

from . import output_path

MODELS = {"mnist": ("mnist", 28), "cifar10": ("cifar10", 32), "conv-only 64x64": ("dead_leaves", 64)}


def model_config(label: str, batch: int):
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  name, width = MODELS[label]
  config = run.experiment_config(name, False, "auto", batch)
  config.model.spatial_width = width
  return config


def train_row(label: str, batch: int, steps: int) -> dict:
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  config = model_config(label, batch)
  r = run.bench_jax_train(config, steps, execution.forward_par(batch))
  memory = r.get("xla_argument_mib", 0) + r.get("xla_temp_mib", 0) + r.get("xla_output_mib", 0)
  return {"model": label, "batch_size": batch, "images_per_sec": r["images_per_sec"],
          "step_ms": r["step_ms"], "xla_memory_mib": memory,
          "gflop_per_image": r["flops_per_step"] / batch / 1e9}


def sample_row(num_images: int, trajectory_length: int) -> dict:
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  config = model_config("mnist", 512)
  config.model.trajectory_length = trajectory_length
  r = run.bench_jax_sample(config, num_images, 1, execution.forward_par(num_images))
  return {"num_images": num_images, "images_per_sec": r["images_per_sec"], "seconds": r["seconds"]}


def eval_row(trajectory_length: int, num_images: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  from dpm_jax import diffusion, evaluate  # pylint: disable=g-import-not-at-top
  config = model_config("mnist", num_images)
  config.model.trajectory_length = trajectory_length
  config.eval.num_strata = min(config.eval.num_strata, trajectory_length - 1)
  task = run.random_task(config, num_images)
  params = diffusion.init_params(task.model, jax.random.key(0))
  par = execution.forward_par(num_images)
  evaluate.bound_all_t(task, params, task.data.test, jax.random.key(0), batch_size=num_images, par=par)
  start = time.perf_counter()
  evaluate.bound_all_t(task, params, task.data.test, jax.random.key(1), batch_size=num_images, par=par)
  seconds = time.perf_counter() - start
  return {"T": trajectory_length, "num_images": num_images, "seconds": seconds,
          "seconds_per_image": seconds / num_images}


def plot(results: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
  for label in MODELS:
    rows = [r for r in results["train"] if r["model"] == label]
    b = [r["batch_size"] for r in rows]
    axes[0].plot(b, [r["images_per_sec"] for r in rows], "o-", label=label)
    axes[1].plot(b, [r["xla_memory_mib"] for r in rows], "o-", label=label)
  for ax, what in zip(axes[:2], ("train images/s", "XLA memory of the step, MiB")):
    ax.set(xscale="log", yscale="log", xlabel="batch size", title=what)
    ax.set_xticks([64, 128, 256, 512, 1024], ["64", "128", "256", "512", "1024"])
    ax.legend(fontsize=8)
  s = results["sample"]
  axes[2].plot([r["num_images"] for r in s], [r["images_per_sec"] for r in s], "o-")
  axes[2].set(xscale="log", xlabel="images sampled at once", title="sampling images/s (MNIST, T=1000)")
  e = results["eval"]
  axes[3].plot([r["T"] for r in e], [r["seconds_per_image"] for r in e], "o-")
  axes[3].set(xlabel="T", ylabel="s / image", title="bound exact over t (MNIST model)")
  fig.suptitle(f"{results['machine']['cpu']}, {results['machine']['cores']} cores "
               f"(matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def markdown(results: dict) -> str:
  lines = ["| model | batch | train img/s | step ms | XLA memory MiB | GFLOP/image |",
           "|---|---|---|---|---|---|"]
  for r in results["train"]:
    lines.append(f"| {r['model']} | {r['batch_size']} | {r['images_per_sec']:.0f} | "
                 f"{r['step_ms']:.0f} | {r['xla_memory_mib']:.0f} | {r['gflop_per_image']:.3f} |")
  lines += ["", "| images sampled at once | sample img/s | seconds |", "|---|---|---|"]
  lines += [f"| {r['num_images']} | {r['images_per_sec']:.2f} | {r['seconds']:.1f} |"
            for r in results["sample"]]
  lines += ["", "| T | images | seconds | s / image |", "|---|---|---|---|"]
  lines += [f"| {r['T']} | {r['num_images']} | {r['seconds']:.1f} | {r['seconds_per_image']:.3f} |"
            for r in results["eval"]]
  return "\n".join(lines)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="a smoke run: one small size each")
  parser.add_argument("--output", default=None, help="default: benchmarks/scaling.json "
                      "(runs/scaling.json outside a checkout; --quick: runs/scaling_quick.json); the plot is written beside it")
  args = parser.parse_args(argv)
  batches = (8,) if args.quick else (64, 128, 256, 512, 1024)
  counts = (2,) if args.quick else (8, 16, 32, 64, 128)
  lengths = (10,) if args.quick else (100, 250, 500, 1000)
  execution.show_cpu_devices(execution.cpu_devices_for(*batches, *counts))
  from benchmarks import run  # pylint: disable=g-import-not-at-top
  output = args.output or (os.path.join("runs", "scaling_quick.json") if args.quick
                           else output_path("scaling.json", "scaling.json"))
  results = {"machine": run.machine_info(), "command": "python -m benchmarks.scaling" + (
      " --quick" if args.quick else ""), "matmul_peak_gflops": run.matmul_peak_gflops(
          512 if args.quick else 2048), "train": [], "sample": [], "eval": []}
  models = ("mnist",) if args.quick else tuple(MODELS)
  for label in models:
    for batch in batches:
      results["train"].append(train_row(label, batch, 2 if args.quick else 3))
      print(json.dumps(results["train"][-1]), flush=True)
  for n in counts:
    results["sample"].append(sample_row(n, 20 if args.quick else 1000))
    print(json.dumps(results["sample"][-1]), flush=True)
  for T in lengths:
    results["eval"].append(eval_row(T, 4 if args.quick else 16))
    print(json.dumps(results["eval"][-1]), flush=True)
  results["markdown"] = markdown(results)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  with open(output, "w") as f:
    json.dump(results, f, indent=2)
  plot(results, os.path.splitext(output)[0] + ".png")
  print("\n" + results["markdown"] + f"\n\nwrote {output}")
  return results


if __name__ == "__main__":
  main()
