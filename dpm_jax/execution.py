"""How a run executes: its devices, the batch's split, micro-batches, the convolution kernel
and the precision of float32 matmuls.

Decided once, by `plan(compute, batch_size, model)`, from config.compute and
the devices JAX shows, before a run writes anything. Nothing here but the
matmul precision on GPUs and TPUs changes what is computed: results equal the
one-device results up to float summation order, so a run may resume with
another plan. This is the one module that
asks which backend JAX runs on.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional, Sequence

from absl import logging
import jax
import ml_collections

from dpm_jax import errors
from dpm_jax import kernels
from dpm_jax import parallel

# The micro-batch that keeps the CPU convolution kernel's buffers in cache.
CPU_MICRO_BATCH = 64


def on_cpu() -> bool:
  return jax.default_backend() == "cpu"


def conv_kernel(name: str) -> str:
  """compute.conv resolved: 'auto' is 'cpu' on a CPU and 'xla' elsewhere."""
  if name not in ("auto",) + kernels.CONV_KERNELS:
    raise errors.UserError(f"compute.conv must be one of {('auto',) + kernels.CONV_KERNELS}, "
                           f"got {name!r}.")
  if name == "auto":
    return "cpu" if on_cpu() else "xla"
  return name


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def largest_divisor_at_most(n: int, limit: int) -> int:
  """The largest d in 1..limit dividing n (every d divides 0)."""
  return max(d for d in range(1, max(1, limit) + 1) if n % d == 0)


def cpu_devices_for(*batch_sizes: int, cores: Optional[int] = None) -> int:
  """The most CPU devices, at most one per core, that divide every batch size."""
  cores = usable_cores() if cores is None else cores
  return largest_divisor_at_most(math.gcd(*map(int, batch_sizes)), cores)


_XLA_COUNT = "--xla_force_host_platform_device_count"


def _environment_count() -> tuple[str, int]:
  """(variable, count) of a CPU device count the user set in the environment, or ('', 0)."""
  match = re.search(_XLA_COUNT + r"=(\d+)", os.environ.get("XLA_FLAGS", ""))
  if match:
    return "XLA_FLAGS", int(match.group(1))
  value = os.environ.get("JAX_NUM_CPU_DEVICES", "").strip()
  if value:
    if not value.isdigit() or int(value) < 1:
      raise errors.UserError(f"JAX_NUM_CPU_DEVICES={value!r} is not a count of devices; set it "
                             "to a positive integer, or unset it.")
    return "JAX_NUM_CPU_DEVICES", int(value)
  return "", 0


def show_cpu_devices(count: Optional[int], default: Optional[int] = None) -> int:
  """Has JAX show `count` CPU devices (None: the user's environment's, else `default`);
  call before JAX runs anything.

  XLA's CPU convolution runs on one core per device, so devices are how a
  CPU's cores all work on one step (a GPU's or TPU's devices are unaffected).
  A count set in the environment is used as set: XLA_FLAGS' always (JAX cannot
  change it), JAX_NUM_CPU_DEVICES' unless `count` is given; the log says which.
  Returns the count set, or 0 when the environment decides or JAX has already
  started (then with a warning, the devices unchanged).

  Raises:
    errors.UserError: a count below 1.
  """
  if count is not None and count < 1:
    raise errors.UserError(f"cpu_devices={count} must be at least 1.")
  variable, env_count = _environment_count()
  if variable == "XLA_FLAGS" or (variable and count is None):
    if count is None or count == env_count:
      logging.info("Using the %d CPU devices %s sets.", env_count, variable)
    elif count < env_count:  # the execution plan takes the first `count`
      logging.info("%s shows %d CPU devices; the run uses the first %d.", variable, env_count,
                   count)
    else:
      logging.warning("%s shows %d CPU devices, fewer than the %d asked for; change %s for "
                      "more.", variable, env_count, count, variable)
    return 0
  if variable:
    logging.info("--cpu_devices / compute.cpu_devices=%d replaces JAX_NUM_CPU_DEVICES=%d.",
                 count, env_count)
  count = default if count is None else count
  if count > usable_cores():
    logging.warning("%d CPU devices on %d cores: the devices beyond one per core share them, "
                    "which is slower.", count, usable_cores())
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as err:  # JAX has already started its backends
    if on_cpu() and jax.local_device_count() != count:
      logging.warning("Keeping JAX's %d CPU devices (asked for %d): %s",
                      jax.local_device_count(), count, err)
    return 0
  return count


def micro_batch_size(requested: int, batch_size: int, num_devices: int, model) -> int:
  """compute.micro_batch_size resolved.

  -1 (auto): 64 where the CPU kernel runs and a device's part of the batch is
  a larger multiple of 64, else 0 (no micro-batches).

  Raises:
    errors.UserError: a size that does not divide the per-device batch.
  """
  if requested == -1:
    per_device = batch_size // num_devices
    fits = per_device > CPU_MICRO_BATCH and per_device % CPU_MICRO_BATCH == 0
    return CPU_MICRO_BATCH if kernels.runs_cpu_conv(model) and fits else 0
  if requested < 0 or (requested and batch_size % (requested * num_devices)):
    raise errors.UserError(
        f"compute.micro_batch_size={requested} must be -1 (auto), 0 (off) or divide the "
        f"per-device batch {batch_size // num_devices}.")
  return requested


def concurrent_micro_batches(requested: int, micro_batch: int, batch_size: int,
                             num_devices: int) -> int:
  """compute.concurrent_micro_batches resolved: micro-batches a device computes side by side.

  0 (auto): on a CPU, the largest divisor of a device's micro-batch count that
  is at most the device's share of the cores (XLA's CPU runtime runs
  independent gradients at once); 1 elsewhere, and without micro-batches.
  N > 0: N, which must divide each device's micro-batches.

  Raises:
    errors.UserError: N > 1 without micro-batches, or not dividing them.
  """
  per_device = batch_size // num_devices
  count = per_device // micro_batch if micro_batch else 1
  if requested == 0:
    if not on_cpu():
      return 1
    local = max(1, num_devices // jax.process_count())
    return largest_divisor_at_most(count, max(1, usable_cores() // local))
  if requested > 1 and not micro_batch:
    raise errors.UserError(
        f"compute.concurrent_micro_batches={requested} needs micro-batches, and "
        f"compute.micro_batch_size resolves to 0 (off) for {per_device} examples per "
        "device; set compute.micro_batch_size, or concurrent_micro_batches to 0 (auto).")
  if requested < 0 or count % requested:
    raise errors.UserError(
        f"compute.concurrent_micro_batches={requested} must be 0 (auto) or divide the "
        f"{count} micro-batches of a device (micro-batches of {micro_batch}, "
        f"{per_device} examples per device).")
  return requested


def check_batch_divides(batch_size: int, num_devices: int,
                        what: str = "train.batch_size") -> None:
  """Raises errors.UserError unless num_devices divides the batch."""
  if batch_size % num_devices:
    raise errors.UserError(
        f"{what}={batch_size} is not divisible by the {num_devices} devices; choose a "
        "multiple of the device count, or another count (--cpu_devices, "
        "compute.cpu_devices on a CPU" + (
            f": at most the devices XLA_FLAGS' {_XLA_COUNT} shows, or change it"
            if _environment_count()[0] == "XLA_FLAGS" else "") + ").")


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a run executes.

  Attributes:
    devices: the devices every batch is split over.
    conv: the convolution kernel, 'cpu' or 'xla' (dpm_jax.kernels).
    micro_batch_size: examples per micro-batch per device; 0 for none.
    concurrent_micro_batches: micro-batches a device computes side by side.
    precision: float32 matmuls' and convolutions' precision (matmul_precision).
  """
  devices: tuple
  conv: str
  micro_batch_size: int
  concurrent_micro_batches: int
  precision: str

  @property
  def par(self) -> parallel.DataParallel:
    return parallel.DataParallel(list(self.devices))

  def describe(self) -> str:
    """The plan in words, for the run's first log line."""
    micro = (f"micro-batches of {self.micro_batch_size}"
             + (f", {self.concurrent_micro_batches} side by side"
                if self.concurrent_micro_batches > 1 else "")
             if self.micro_batch_size else "no micro-batches")
    return (f"{len(self.devices)} {self.devices[0].platform.upper()} device(s) in "
            f"{jax.process_count()} process(es), the {self.conv} convolution, {micro}, "
            f"matmuls at {self.precision!r} precision")


def plan(compute: ml_collections.ConfigDict, batch_size: int, model,
         devices: Optional[Sequence[jax.Device]] = None) -> Plan:
  """The execution plan of a run from config.compute and its training batch (all devices).

  devices: the devices to use instead of every device JAX shows (on a CPU,
  compute.cpu_devices = N > 0 takes the first N).

  Raises:
    errors.UserError: settings that do not fit the batch or the devices, each
      naming the setting and a fix.
  """
  if devices is None:
    devices = jax.devices()
    n = compute.cpu_devices
    if n and on_cpu() and jax.process_count() == 1:
      if n > len(devices):
        variable = _environment_count()[0]
        raise errors.UserError(
            f"compute.cpu_devices={n} exceeds the {len(devices)} CPU devices JAX shows; "
            + (f"{variable} sets that count: change it, or use at most {len(devices)}."
               if variable else f"use --cpu_devices={n} (the entry points show that many), "
               f"or at most {len(devices)}."))
      devices = devices[:n]
  devices = tuple(devices)
  check_batch_divides(batch_size, len(devices))
  micro = micro_batch_size(compute.micro_batch_size, batch_size, len(devices), model)
  concurrent = concurrent_micro_batches(compute.concurrent_micro_batches, micro, batch_size,
                                        len(devices))
  return Plan(devices, conv_kernel(compute.conv), micro, concurrent, compute.matmul_precision)


def matmul_precision(compute: ml_collections.ConfigDict):
  """A context under which JAX traces float32 matmuls and convolutions at
  compute.matmul_precision: training, sampling and evaluation run under it.

  On TPUs 'default' is one bfloat16 pass and on recent GPUs TF32 (about 3
  significant digits); the bound's smallest t, where most of it lies, perturb x_t
  by sqrt(beta_t) ~ 1e-3 of a unit, so the default here is 'highest'.
  """
  return jax.default_matmul_precision(compute.matmul_precision)


def precision_in_force() -> str:
  """The matmul precision JAX traces with now, for result files."""
  return jax.config.jax_default_matmul_precision or "default"


def forward_par(batch_size: int) -> parallel.DataParallel:
  """Devices for forward-only work of `batch_size` examples (sampling, evaluation from a
  run): the most local devices whose count divides it."""
  devices = jax.local_devices()
  return parallel.DataParallel(devices[:largest_divisor_at_most(batch_size, len(devices))])
