"""How fast the image-folder source feeds training (dpm_jax.image_folder, through Grain).

  python -m benchmarks.loader            # 1000 JPEGs of 256 x 256, made in a temporary folder

Measures images/s of the loader alone (the training stream of data.train_batches,
nothing else running), with 0 worker processes (decoding in two threads of this
process) and with 2, in both folder modes (resize to 32 x 32, random 32 x 32
crops), beside what the training step consumes: images/s of the train step of
the CIFAR-10-sized model (the reference README's network, 32 x 32 x 3) at batch
64, measured in the same run. Writes benchmarks/loader.json (runs/loader.json outside
a checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from . import output_path


def make_jpegs(folder: str, n: int, size: int) -> None:
  """n smooth random colour images (a few sinusoids), as JPEG files."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:size, 0:size] / size
  for i in range(n):
    f = rng.uniform(1, 8, (3, 2))
    image = np.stack([np.sin(2 * np.pi * (f[c, 0] * yy + f[c, 1] * xx) + c) for c in range(3)], -1)
    Image.fromarray(((image + 1) * 127.5).astype(np.uint8)).save(
        os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def loader_rate(folder: str, mode: str, workers: int, batch: int, steps: int) -> dict:
  """Images/s of the training stream, after its first batch (worker start-up)."""
  from dpm_jax import data, images  # pylint: disable=g-import-not-at-top
  config = images.CIFAR10.default_config()
  config.data.update(source="folder", dir=folder, folder_mode=mode, workers=workers)
  dataset = images.CIFAR10.load_data(config)
  start = time.perf_counter()
  stream = data.train_batches(dataset.train, batch, 0, 0, workers=workers)
  next(stream)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    next(stream)
  seconds = time.perf_counter() - start
  return {"images_per_sec": steps * batch / seconds, "first_batch_s": first}


def train_rate(batch: int, steps: int) -> float:
  """Images/s of the CIFAR-10 model's train step (the loop's own) on random images."""
  import jax  # pylint: disable=g-import-not-at-top
  from . import run  # pylint: disable=g-import-not-at-top
  from dpm_jax import parallel  # pylint: disable=g-import-not-at-top
  config = run.experiment_config("cifar10", quick=False, batch=batch)
  return run.bench_jax_train(config, steps, parallel.DataParallel(jax.devices()))[
      "images_per_sec"]


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=1000)
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--output", default=output_path("loader.json", "loader.json"))
  args = parser.parse_args(argv)
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  results = {"command": "python -m benchmarks.loader", "images": args.images,
             "image_size": args.size, "batch": args.batch, "loader": {}}
  with tempfile.TemporaryDirectory() as folder:
    make_jpegs(folder, args.images, args.size)
    for mode in ("resize", "crops"):
      for workers in (0, 2):
        results["loader"][f"{mode}, {workers} workers"] = loader_rate(
            folder, mode, workers, args.batch, args.steps)
  results["train_step_images_per_sec"] = train_rate(args.batch, 5)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    json.dump(results, f, indent=2)
  print(f"{args.images} JPEGs of {args.size} x {args.size}, batch {args.batch}:")
  for name, r in results["loader"].items():
    print(f"  loader, {name:18s} {r['images_per_sec']:7.0f} images/s "
          f"(first batch after {r['first_batch_s']:.1f} s)")
  print(f"  train step (CIFAR-10 model)   {results['train_step_images_per_sec']:7.0f} images/s")
  return results


if __name__ == "__main__":
  main()
