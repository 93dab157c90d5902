"""The train state and the jitted train step.

train_step(state, batch, base_key) draws every random number of step s from
fold_in(base_key, s), computes the gradient of the bound (dpm_jax.diffusion's
loss_fn, split over micro-batches and devices by dpm_jax.parallel) and
applies the optimiser (dpm_jax.optim). The running sums of the loss live in
the state, so the averages logged after a resume equal the uninterrupted
run's.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from dpm_jax import config as config_lib
from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import parallel


class TrainState(train_state.TrainState):
  """Flax TrainState plus device-side metric accumulators (checkpointed with it).

  Keeping the running sums in the state makes the logged averages identical
  after a resume from a checkpoint taken between two log steps.
  """
  loss_sum: jax.Array
  loss_count: jax.Array
  nonfinite_streak: jax.Array


def create_train_state(model: nn.Module, params: Any,
                       tx: optax.GradientTransformation) -> TrainState:
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      loss_sum=jnp.zeros([], jnp.float32), loss_count=jnp.zeros([], jnp.int32),
      nonfinite_streak=jnp.zeros([], jnp.int32))


def make_train_step(loss_and_grad_fn: Callable, prepare: Callable) -> Callable:
  """train_step(state, batch, base_key) -> (state, step_metrics).

  Args:
    loss_and_grad_fn: parallel.make_loss_and_grad(loss_fn, ...).
    prepare: a batch of stored examples -> x_0 in model units (Task.prepare).
  """

  def train_step(state: TrainState, batch, base_key):
    rng = jax.random.fold_in(base_key, state.step)
    (loss, aux), grads = loss_and_grad_fn(state.params, prepare(batch), rng)
    new_state = state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss)
    new_state = new_state.replace(
        loss_sum=state.loss_sum + jnp.where(finite, loss, 0.0),
        loss_count=state.loss_count + finite.astype(jnp.int32),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = dict(aux)
    metrics.update(diffusion.get_norms(state.params["params"], grads["params"]))
    return new_state, metrics

  return train_step


def micro_batching(config: ml_collections.ConfigDict, model: nn.Module,
                   num_devices: int) -> tuple[int, int]:
  """(micro-batch size, micro-batches side by side) of each device's part of the
  training batch: config.compute's, resolved (dpm_jax.parallel).

  Raises:
    errors.UserError: settings that do not fit the batch on num_devices.
  """
  batch = config.train.batch_size
  micro = parallel.micro_batch_size(config.compute.micro_batch_size, batch, num_devices, model)
  return micro, parallel.concurrent_micro_batches(config.compute.concurrent_micro_batches, micro,
                                                  batch, num_devices)


def describe_micro_batching(config: ml_collections.ConfigDict, model: nn.Module,
                            num_devices: int) -> str:
  """'micro-batches of 64, 2 side by side' (or 'no micro-batches'), for the run's log."""
  micro, concurrent = micro_batching(config, model, num_devices)
  if not micro:
    return "no micro-batches"
  return f"micro-batches of {micro}" + (f", {concurrent} side by side" if concurrent > 1 else "")


def check_compute(config: ml_collections.ConfigDict, model: nn.Module,
                  device_counts) -> None:
  """Checks the training batch and config.compute's micro-batches against each of
  these device counts (parallel.training_device_counts), before anything runs.

  Raises:
    errors.UserError: naming the setting, and the device count it does not fit.
  """
  for n in device_counts:
    parallel.check_batch_divides(config.train.batch_size, n)
  errors = {}
  for n in device_counts:
    try:
      micro_batching(config, model, n)
    except errors.UserError as err:
      errors[n] = err
  if not errors:
    return
  fits = [n for n in device_counts if n not in errors]
  n, err = next(iter(errors.items()))
  if not fits:
    raise err
  raise errors.UserError(
      f"{err} That is on {n} devices, which training may choose on this machine; "
      f"--cpu_devices={fits[0]} (compute.cpu_devices={fits[0]}) trains on {fits[0]}, "
      "where it fits.")


def jit_train_step(task, config: ml_collections.ConfigDict,
                   par: parallel.DataParallel) -> Callable:
  """The jitted, data-parallel train step of a task (dpm_jax.experiment.Task):
  what the loop and the benchmark run. How it runs (micro-batches, devices) is
  config.compute's, decided here once."""
  micro_batch, concurrent = micro_batching(config, task.model, par.num_devices)
  loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.uniform_noise, train=True)
  loss_and_grad = parallel.make_loss_and_grad(loss_fn, micro_batch_size=micro_batch,
                                              concurrent_micro_batches=concurrent,
                                              mesh=par.mesh)
  return jax.jit(make_train_step(loss_and_grad, task.prepare), donate_argnums=(0,),
                 in_shardings=(par.replicated, par.batch_sharding, par.replicated),
                 out_shardings=(par.replicated, par.replicated))


@jax.jit
def all_finite(state: Any) -> jax.Array:
  """Whether every floating-point array of the state is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
