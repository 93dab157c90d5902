"""Data parallelism: a batch split over devices, and the CPU's cores as devices.

Every computation of the model is per image, so a batch splits over devices
with nothing but its mean crossing between them. On GPUs and TPUs the devices
are the accelerators. On a CPU, JAX shows one device by default, whose ops are
multi-threaded one at a time; the model's ops are small (a 28x28 MNIST batch
of 64 is a few MB), and their threading leaves cores idle. Showing JAX one CPU
device per core (`use_cpu_devices`, done by the entry points) and splitting
the batch over them runs whole parts of the batch side by side instead.

Batches are split over a 1-D mesh with the axis 'data':
  forward-only work (sampling, evaluation): the batch is placed, or
      constrained, sharded over the mesh and XLA splits every op;
  training: the gradient runs per device under shard_map (its micro-batch
      and convolution-chunk loops slice the batch, which must be the
      device's own part) and the parts are averaged (dpm_jax.diffusion).
Results equal the one-device results up to float summation order.
"""

from __future__ import annotations

import math
import os
from typing import Optional

from absl import logging
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dpm_jax import config as config_lib

AXIS = "data"


class DataParallel:
  """A 1-D mesh over devices (all by default): the batch sharded, the state replicated.

  The batch size stays global; every process feeds its own slice of it.
  """

  def __init__(self, devices=None):
    devices = np.asarray(devices if devices is not None else jax.devices())
    self.mesh = Mesh(devices, (AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))
    self.num_devices = devices.size

  @classmethod
  def for_batch(cls, batch_size: int) -> "DataParallel":
    """The most local devices (in order) whose count divides batch_size."""
    devices = jax.local_devices()
    return cls(devices[:_largest_divisor_at_most(batch_size, len(devices))])

  def check_batch_size(self, batch_size: int, what: str = "train.batch_size") -> None:
    if batch_size % self.num_devices:
      raise config_lib.ConfigError(
          f"{what}={batch_size} is not divisible by the {self.num_devices} "
          "devices; choose a multiple of the device count.")

  def put_batch(self, global_batch: np.ndarray) -> jax.Array:
    """Places a global batch (identical on every process) sharded over devices."""
    if jax.process_count() == 1:
      return jax.device_put(global_batch, self.batch_sharding)
    n = global_batch.shape[0] // jax.process_count()
    local = global_batch[jax.process_index() * n:(jax.process_index() + 1) * n]
    return jax.make_array_from_process_local_data(self.batch_sharding, local,
                                                  global_batch.shape)

  def put_replicated(self, tree):
    return jax.device_put(tree, self.replicated)

  def constrain_batch(self, x):
    """Inside jit: x's leading (batch) axis sharded over the mesh."""
    if self.num_devices == 1:
      return x
    return jax.lax.with_sharding_constraint(x, self.batch_sharding)


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def cpu_devices_for(*batch_sizes: int, cores: Optional[int] = None) -> int:
  """The most CPU devices, at most one per core, that divide every batch size."""
  cores = usable_cores() if cores is None else cores
  return _largest_divisor_at_most(math.gcd(*map(int, batch_sizes)), cores)


def _largest_divisor_at_most(n: int, limit: int) -> int:
  """The largest d in 1..limit dividing n (every d divides 0)."""
  return max(d for d in range(1, max(1, limit) + 1) if n % d == 0)


def _forced_by_xla_flags() -> bool:
  return "--xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", "")


def use_cpu_devices(count: int) -> int:
  """Has JAX show `count` CPU devices; call before JAX runs anything.

  An explicit XLA_FLAGS=--xla_force_host_platform_device_count=N wins. Only
  the CPU backend is affected: on a GPU or TPU the accelerators remain the
  devices. Returns the count set, or 0 when XLA_FLAGS decides or JAX has
  already started (then with a warning, the devices unchanged).
  """
  if count < 1:
    raise config_lib.ConfigError(f"cpu_devices={count} must be at least 1.")
  if _forced_by_xla_flags():
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as err:  # JAX has already started its backends
    logging.warning("Keeping JAX's CPU devices as they are (%s).", err)
    return 0
  return count
