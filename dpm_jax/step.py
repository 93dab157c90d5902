"""The train state and the jitted train step.

Every random number of step s comes from fold_in(base_key, s); the running
sums of the loss live in the state (and its checkpoints), so the averages
logged after a resume equal the uninterrupted run's.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from dpm_jax import diffusion
from dpm_jax import execution
from dpm_jax import parallel


class TrainState(train_state.TrainState):
  """Flax TrainState plus the loss's running sums since the last log, and the
  number of non-finite losses in a row."""
  loss_sum: jax.Array
  loss_count: jax.Array
  nonfinite_streak: jax.Array


  @property
  def eval_params(self) -> Any:
    """The parameters evaluation and sampling use."""
    return self.params


class EMATrainState(TrainState):
  """A TrainState that also keeps an exponential moving average of the parameters,
  updated after every step, which evaluation and sampling use. Its checkpoints hold
  the average, so a resumed run continues it exactly."""
  ema_params: Any
  ema_decay: float = struct.field(pytree_node=False)

  @property
  def eval_params(self) -> Any:
    return self.ema_params

  def apply_gradients(self, *, grads, **kwargs) -> "EMATrainState":
    new = super().apply_gradients(grads=grads, **kwargs)
    return new.replace(ema_params=optax.incremental_update(new.params, self.ema_params,
                                                           1.0 - self.ema_decay))


def create_train_state(model: nn.Module, params: Any, tx: optax.GradientTransformation,
                       ema_decay: float = 0.0) -> TrainState:
  """The state at step 0; with ema_decay > 0 an EMATrainState, its average starting at
  `params`."""
  sums = dict(loss_sum=jnp.zeros([], jnp.float32), loss_count=jnp.zeros([], jnp.int32),
              nonfinite_streak=jnp.zeros([], jnp.int32))
  if ema_decay:
    # A copy: the train step donates the state, and one buffer cannot be donated twice.
    return EMATrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                ema_params=jax.tree.map(jnp.copy, params), ema_decay=ema_decay,
                                **sums)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx, **sums)


def jit_train_step(task, plan: execution.Plan) -> Callable:
  """train_step(state, batch, base_key) -> (state, step_metrics) of a task
  (dpm_jax.experiment.Task; batch: its stored examples), jitted and split over
  micro-batches and devices as the execution plan says."""
  par = plan.par
  loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.units.uniform_noise, train=True)
  loss_and_grad_fn = parallel.make_loss_and_grad(
      loss_fn, micro_batch_size=plan.micro_batch_size,
      concurrent_micro_batches=plan.concurrent_micro_batches, mesh=par.mesh)

  def train_step(state: TrainState, batch, base_key):
    rng = jax.random.fold_in(base_key, state.step)
    (loss, aux), grads = loss_and_grad_fn(state.params, task.units.to_model(batch), rng)
    new_state = state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss)
    new_state = new_state.replace(
        loss_sum=state.loss_sum + jnp.where(finite, loss, 0.0),
        loss_count=state.loss_count + finite.astype(jnp.int32),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = dict(aux)
    metrics.update(diffusion.get_norms(state.params["params"], grads["params"]))
    return new_state, metrics

  return jax.jit(train_step, donate_argnums=(0,),
                 in_shardings=(par.replicated, par.batch_sharding, par.replicated),
                 out_shardings=(par.replicated, par.replicated))


@jax.jit
def all_finite(state: Any) -> jax.Array:
  """Whether every floating-point array of the state is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
