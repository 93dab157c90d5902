"""Data parallelism: a batch split over devices, and the CPU's cores as devices.

Every computation of the model is per image, so a batch splits over devices
with nothing but its mean crossing between them. On GPUs and TPUs the devices
are the accelerators. On a CPU, JAX shows one device by default, whose ops run
one after another, its matmuls multi-threaded and its convolutions on one core;
the model's ops are small (a 28x28 MNIST batch of 64 is a few MB), and cores
stay idle. Showing JAX one CPU
device per core (`use_cpu_devices`, done by the entry points) and splitting
the batch over them runs whole parts of the batch side by side instead.

Batches are split over a 1-D mesh with the axis 'data':
  forward-only work (sampling, evaluation): the batch is placed, or
      constrained, sharded over the mesh and XLA splits every op;
  training: `make_loss_and_grad` runs the gradient of any loss per device
      under shard_map (micro-batch loops and the CPU convolution's chunk
      loop slice the batch, which must be the device's own part) and
      averages the parts; a CPU device with several cores computes as many
      micro-batches side by side, since XLA's CPU convolution keeps to one.
Results equal the one-device results up to float summation order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dpm_jax import config as config_lib
from dpm_jax import errors
from dpm_jax import kernels
from dpm_jax import outputs

AXIS = "data"
# The micro-batch that keeps the CPU convolution kernel's buffers in cache.
CPU_MICRO_BATCH = 64


def micro_batch_size(requested: int, batch_size: int, num_devices: int, model) -> int:
  """compute.micro_batch_size, resolved: -1 (auto) picks 64 where it pays, else 0.

  0 computes the gradient of each device's part of the batch at once; a
  positive value accumulates it over micro-batches of that size (the same
  draws, so the same gradient up to float rounding). Micro-batches keep the
  CPU convolution kernel's buffers small, so 'auto' uses them only for a
  model whose convolutions run that kernel (kernels.runs_cpu_conv) and a
  per-device batch that 64 divides and exceeds; any other model (XLA's
  convolution, the Table 1 models) takes its part of the batch whole.

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
  """compute.concurrent_micro_batches, resolved: micro-batches a device computes side by side.

  XLA's CPU convolution runs on one thread per device, where its matmuls and
  many other ops spread over every core: on one CPU device the convolutions of
  a single chain of micro-batches leave the other cores idle. The gradients of
  micro-batches with nothing computed between them are independent programs,
  which XLA's CPU runtime runs side by side (BENCHMARKS.md). 0 (auto): on a
  CPU, the largest divisor of a device's micro-batch count that is at most
  the device's share of the cores; 1 elsewhere, and without micro-batches
  (micro_batch 0). N > 0: N, which must divide each device's micro-batches.
  The gradient is the same up to float summation order.

  Raises:
    errors.UserError: N > 1 without micro-batches, or not dividing them.
  """
  per_device = batch_size // num_devices
  count = per_device // micro_batch if micro_batch else 1
  if requested == 0:
    if jax.default_backend() != "cpu":
      return 1
    local = max(1, num_devices // jax.process_count())
    return _largest_divisor_at_most(count, max(1, usable_cores() // local))
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
        "compute.cpu_devices on a CPU).")


def training_device_counts(cpu_devices: int = 0) -> list:
  """The device counts training_devices may choose for the training step, before
  any calibration: its one count where that is fixed, else 1 and every device."""
  fixed = _fixed_training_devices(cpu_devices)
  return [len(fixed[0])] if fixed else [1, jax.device_count()]


def make_loss_and_grad(loss_fn, *, micro_batch_size: int = 0, concurrent_micro_batches: int = 1,
                       mesh: Optional[Mesh] = None) -> Callable:
  """fn(params, batch, rng) -> ((loss, metrics), grads) of a StochasticLoss.

  The loss's draws (dpm_jax.diffusion.Draws) are made once for the whole
  batch; each part of the batch then uses its slice of the per-example draws
  and the shared ones as they are, so a part's loss is that slice of the
  whole batch's loss, and the mean over parts is the whole batch's loss and
  gradient up to float summation order, whatever the parts:

    micro_batch_size > 0: the gradient is accumulated over micro-batches of
      that size in a lax.scan (only concurrent_micro_batches micro-batches'
      memory is live at a time, which is faster on CPUs), each iteration
      computing the gradients of concurrent_micro_batches of them, which
      depend on nothing computed in between;
    a mesh of several devices, the batch sharded over it: each device
      computes its part (micro-batched as above) under shard_map, and the
      parts are averaged with pmean.

  Only `Draws.key` (dropout masks) is folded per part, so dropout masks
  depend on the split.

  Args:
    loss_fn: a dpm_jax.diffusion.StochasticLoss (draw and apply).
    micro_batch_size: examples per micro-batch per device; 0 for none.
    concurrent_micro_batches: micro-batches per iteration of the loop; it
      must divide a device's micro-batches.
    mesh: a 1-D mesh (DataParallel.mesh); None or one device: no shard_map.
  """
  grad_fn = jax.value_and_grad(loss_fn.apply, has_aux=True)
  m, k = micro_batch_size, concurrent_micro_batches
  fold = lambda keys, i: jax.tree.map(lambda k: jax.random.fold_in(k, i), keys)

  def local(params, batch, draws):
    b = jax.tree.leaves(batch)[0].shape[0]
    if not m or m == b:
      return grad_fn(params, batch, draws)
    if b % m:
      raise ValueError(f"micro_batch_size={m} does not divide the batch of {b}.")
    if (b // m) % k:
      raise ValueError(f"concurrent_micro_batches={k} does not divide the {b // m} "
                       "micro-batches.")

    def micro(i):
      take = lambda tree: jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, i * m, m), tree)
      return take(batch), draws._replace(per_example=take(draws.per_example),
                                         key=fold(draws.key, i))

    def body(acc, i):
      # k gradients with nothing between them: XLA's CPU runtime runs them side by side.
      parts = [grad_fn(params, *micro(i * k + j)) for j in range(k)]
      return jax.tree.map(lambda a, *g: sum(g, a), acc, *parts), None

    zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        jax.eval_shape(lambda: grad_fn(params, *micro(0))))
    total, _ = jax.lax.scan(body, zero, jnp.arange(b // m // k))
    return jax.tree.map(lambda a: a / (b // m), total)

  if mesh is not None and mesh.size > 1:
    axis = mesh.axis_names[0]
    one_device = local

    def local(params, batch, draws):
      draws = draws._replace(key=fold(draws.key, jax.lax.axis_index(axis)))
      return jax.lax.pmean(one_device(params, batch, draws), axis)

    def draws_spec(draws):
      return type(draws)(jax.tree.map(lambda _: P(axis), draws.per_example),
                         jax.tree.map(lambda _: P(), draws.shared),
                         jax.tree.map(lambda _: P(), draws.key))

    def sharded(params, batch, draws):
      # The replicated parameters and the averaged outputs need no
      # varying-axis tracking: nothing is differentiated through the shard_map.
      return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(axis), draws_spec(draws)),
                           out_specs=P(), check_vma=False)(params, batch, draws)
  else:
    sharded = local

  def loss_and_grad(params, batch, rng):
    return sharded(params, batch, loss_fn.draw(rng, batch))

  return loss_and_grad


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
    check_batch_divides(batch_size, self.num_devices, what)

  def put_batch(self, global_batch: np.ndarray) -> jax.Array:
    """Places a global batch (identical on every process) sharded over devices."""
    if jax.process_count() == 1:
      return jax.device_put(global_batch, self.batch_sharding)
    n = global_batch.shape[0] // jax.process_count()
    local = global_batch[jax.process_index() * n:(jax.process_index() + 1) * n]
    return jax.make_array_from_process_local_data(self.batch_sharding, local,
                                                  global_batch.shape)

  def put_local_batch(self, local_batch: np.ndarray, global_size: int) -> jax.Array:
    """Places this process's rows of a global batch of `global_size` examples (all of
    them with one process) sharded over the devices."""
    if jax.process_count() == 1:
      return jax.device_put(local_batch, self.batch_sharding)
    return jax.make_array_from_process_local_data(self.batch_sharding, local_batch,
                                                  (global_size,) + local_batch.shape[1:])

  def put_replicated(self, tree):
    return jax.device_put(tree, self.replicated)

  def to_host(self, x) -> np.ndarray:
    """The whole of an array sharded over the mesh, as numpy, on every process."""
    if jax.process_count() == 1:
      return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))

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


# Runs with fewer steps than this skip the calibration below and split their
# batch over every CPU device: the choice cannot repay a second compilation.
CALIBRATE_MIN_STEPS = 100
CALIBRATION_REPEATS = 3


def cache_dir() -> str:
  """Where per-machine measurements are kept: $DPM_JAX_CACHE_DIR, else
  $XDG_CACHE_HOME/dpm_jax (default ~/.cache/dpm_jax)."""
  return os.environ.get("DPM_JAX_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser(os.path.join("~", ".cache")),
      "dpm_jax")


def cpu_model() -> str:
  """The processor's model name (Linux's /proc/cpuinfo), or '' where it cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    return ""


def machine_signature() -> dict:
  """What a CPU timing depends on besides the program: the processor, the cores this
  process may use, jax's version."""
  return {"cpu": cpu_model(), "cores": usable_cores(), "jax": jax.__version__}


def calibrate_split(time_step: Callable[[list], float], signature: dict,
                    *, cache: Optional[str] = None) -> dict:
  """The faster way to run a training step on this process's CPU devices: on the first
  device alone (its ops multi-threaded over every core) or split over all of them.

  time_step(devices) -> seconds per step of the training step on those devices.
  A lock-step split waits at every step for the slower core, so which is faster
  depends on the host and its load, not only on the program (BENCHMARKS.md):
  both are timed, once per machine and signature (the program: model, batch,
  compute settings), and the answer is kept in <cache_dir()>/training_split.json.

  Returns {'devices': n, 'seconds': {'1': s, 'n': s}, 'cached': bool}.
  """
  devices = jax.devices()
  key = json.dumps({**machine_signature(), **signature}, sort_keys=True, default=str)
  key = hashlib.sha256(key.encode()).hexdigest()[:16]
  path = os.path.join(cache or cache_dir(), "training_split.json")
  known = outputs.read_json_object(path)
  if key in known and known[key].get("devices", 0) in (1, len(devices)):
    return {**known[key], "cached": True}
  seconds = {str(n): float(time_step(devices[:n])) for n in (1, len(devices))}
  choice = {"devices": min((1, len(devices)), key=lambda n: seconds[str(n)]),
            "seconds": seconds, "signature": signature}
  try:  # another process may have written meanwhile: read again
    outputs.write_json(path, {**outputs.read_json_object(path), key: choice})
  except OSError as err:  # a read-only home: measured again next time
    logging.warning("Could not keep the calibration in %s: %s", path, err)
  return {**choice, "cached": False}


def training_devices(cpu_devices: int = 0, *, num_steps: int = 0,
                     time_step: Optional[Callable[[list], float]] = None,
                     signature: Optional[dict] = None) -> tuple[list, str]:
  """The devices a training step splits its batch over, and why.

  On GPUs and TPUs, under jax.distributed, and with one device: every device.
  On one process's CPU devices: cpu_devices=N > 0 (compute.cpu_devices,
  --cpu_devices) splits over the first N. cpu_devices=0 (auto): a run of at
  least CALIBRATE_MIN_STEPS steps, given time_step and signature, takes the
  faster of one device and all of them (calibrate_split, cached per machine);
  a shorter run, or one without time_step, splits over all of them.
  Forward-only work (sampling, evaluation) is split over every device.

  Returns (devices, a phrase saying how they were chosen).
  """
  fixed = _fixed_training_devices(cpu_devices)
  if fixed:
    return fixed
  devices = jax.devices()
  if time_step is None or num_steps < CALIBRATE_MIN_STEPS:
    return devices, "every CPU device (a short run: no calibration)"
  choice = calibrate_split(time_step, signature or {})
  times = ", ".join(f"{n} device(s) {1e3 * s:.0f} ms"
                    for n, s in sorted(choice["seconds"].items()))
  return devices[:choice["devices"]], (
      f"the faster on this machine ({times}" + (", measured earlier" if choice["cached"]
                                                else "") + ")")


def _fixed_training_devices(cpu_devices: int) -> Optional[tuple[list, str]]:
  """training_devices's answer where no timing can change it, else None (auto on
  one process's several CPU devices)."""
  devices = jax.devices()
  if jax.default_backend() != "cpu" or jax.process_count() > 1 or len(devices) == 1:
    return devices, "every device"
  if cpu_devices:
    return devices[:cpu_devices], f"compute.cpu_devices={cpu_devices}"
  return None


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
    raise errors.UserError(f"cpu_devices={count} must be at least 1.")
  if _forced_by_xla_flags():
    return 0
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError as err:  # JAX has already started its backends
    if jax.default_backend() == "cpu" and jax.local_device_count() != count:
      logging.warning("Keeping JAX's %d CPU devices (asked for %d): %s",
                      jax.local_device_count(), count, err)
    return 0
  return count
