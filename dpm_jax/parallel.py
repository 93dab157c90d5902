"""Data parallelism: a batch split over devices, the gradient over micro-batches.

Batches are split over a 1-D mesh with the axis 'data'. For forward-only work
(sampling, evaluation) the batch is placed, or constrained, sharded over the
mesh and XLA splits every op; for training, `make_loss_and_grad` splits the
gradient.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"


def make_loss_and_grad(loss_fn, *, micro_batch_size: int = 0, concurrent_micro_batches: int = 1,
                       mesh: Optional[Mesh] = None) -> Callable:
  """fn(params, batch, rng) -> ((loss, metrics), grads) of a StochasticLoss.

  The loss's draws (dpm_jax.diffusion.Draws) are made once for the whole
  batch and each part of the batch uses its slice of them, so the mean over
  parts is the whole batch's loss and gradient up to float summation order:

    micro_batch_size > 0: the gradient is accumulated over micro-batches of
      that size in a lax.scan, concurrent_micro_batches of them per
      iteration (only their memory is live at a time);
    a mesh of several devices, the batch sharded over it: each device
      computes its part (micro-batched as above) under shard_map, as the
      micro-batch and CPU convolution loops slice the batch, and the parts
      are averaged with pmean.

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
      # No varying-axis tracking: nothing is differentiated through the shard_map.
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

  def put_batch(self, global_batch: np.ndarray) -> jax.Array:
    """Places a global batch (identical on every process) sharded over devices."""
    n = global_batch.shape[0] // jax.process_count()
    local = global_batch[jax.process_index() * n:(jax.process_index() + 1) * n]
    return self.put_local_batch(local, global_batch.shape[0])

  def put_local_batch(self, local_batch: np.ndarray, global_size: int) -> jax.Array:
    """Places this process's rows of a global batch of `global_size` examples, sharded."""
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


