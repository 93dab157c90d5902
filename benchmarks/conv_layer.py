"""One convolution layer's gradient, by kernel: where the CPU kernel's time goes.

  python -m benchmarks.conv_layer             # the MNIST model's layers, batch 64 and 512
  python -m benchmarks.conv_layer --quick     # a smoke run (small images)
  XLA_FLAGS=--xla_cpu_use_onednn=true python -m benchmarks.conv_layer   # an XLA option

Times jax.grad of sum(layer(x, kernel, bias)^2) with respect to all three, jitted, for
each convolution kernel of dpm_jax.kernels ('xla': XLA's convolution differentiated by
JAX; 'cpu': XLA's forward and the hand-written backward pass), and XLA's forward
convolution alone (the floor of a forward and backward pass: about a third of it).
Shapes are the MNIST model's (3x3 filters, 28x28 images, 1 -> 20 and 20 -> 20
channels) at the micro-batch a training step runs (64) and the whole batch (512). The
kernels are timed in turn, repeat after repeat, so that a drift of the host's speed
reaches all of them alike; the median is printed (ms), one device, float32, with the
cores each kept busy (the process's CPU time over the wall time, all repeats): XLA's
CPU convolution runs on one core per device, where its matmuls use every core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
from jax import lax

from dpm_jax import kernels


def _forward_only(x, kernel, bias):
  return lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias


def programs(batch: int, width: int, c_in: int, c_out: int) -> dict:
  """{label: (jitted fn, args)} for one layer shape."""
  keys = jax.random.split(jax.random.key(0), 2)
  x = jax.random.normal(keys[0], (batch, width, width, c_in), jnp.float32)
  kernel = 0.1 * jax.random.normal(keys[1], (3, 3, c_in, c_out), jnp.float32)
  bias = jnp.zeros((c_out,), jnp.float32)
  out = {}
  for name in ("xla", "cpu"):
    layer = kernels.conv_layer(name)
    loss = lambda x, k, b, layer=layer: jnp.sum(layer(x, k, b) ** 2)
    out[f"{name} forward+backward"] = (jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
                                       (x, kernel, bias))
  out["XLA forward alone"] = (jax.jit(_forward_only), (x, kernel, bias))
  return out


def time_programs(progs: dict, repeats: int) -> tuple[dict, dict]:
  """({label: median ms}, {label: cores busy}) of the programs, run in turn, repeat
  after repeat; cores busy is the process's CPU time over the wall time."""
  for fn, args in progs.values():
    jax.block_until_ready(fn(*args))
  times = {label: [] for label in progs}
  cpu = dict.fromkeys(progs, 0.0)
  for _ in range(repeats):
    for label, (fn, args) in progs.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      jax.block_until_ready(fn(*args))
      times[label].append(time.perf_counter() - start)
      cpu[label] += time.process_time() - start_cpu
  return ({label: 1e3 * statistics.median(t) for label, t in times.items()},
          {label: cpu[label] / sum(times[label]) for label in progs})


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--quick", action="store_true", help="8x8 images, batch 8, 3 repeats")
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args(argv)
  width, batches, repeats = (8, (8,), 3) if args.quick else (28, (64, 512), args.repeats)
  rows = []
  for batch in batches:
    for c_in, c_out in ((1, 20), (20, 20)):
      ms, busy = time_programs(programs(batch, width, c_in, c_out), repeats)
      rows.append({"batch": batch, "width": width, "c_in": c_in, "c_out": c_out, "ms": ms,
                   "cores_busy": busy})
      print(f"batch {batch}, {width}x{width}, {c_in:2d} -> {c_out} channels: "
            + ", ".join(f"{label} {t:.1f} ms ({busy[label]:.2f} cores)"
                        for label, t in ms.items()), flush=True)
  print(json.dumps({"devices": str(jax.devices()[0]), "rows": rows}))
  return rows


if __name__ == "__main__":
  main()
