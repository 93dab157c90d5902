"""The optimiser: the reference code's RMSprop (or Adam), its learning-rate decay,
and the rule that zeroes a non-finite gradient.

Reference code: train.py (Blocks' RemoveNotFinite, RMSProp; the learning
rate decayed by 10x per 1000 epochs, once an epoch).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

# The reference code decays the learning rate by 10x per 1000 epochs, once an epoch.
LR_DECAY_PER_EPOCH = math.exp(math.log(0.1) / 1000.0)


class NonFiniteState(NamedTuple):
  total: jax.Array  # tensors whose gradient was zeroed, summed over all steps
  last: jax.Array   # tensors zeroed at the latest step


def zero_nonfinite_per_tensor() -> optax.GradientTransformation:
  """Zeroes each gradient tensor that holds a NaN or Inf, and counts them.

  Blocks' RemoveNotFinite in the reference code: a non-finite step for one
  parameter tensor becomes a zero step for that tensor; the other tensors
  update as usual. Placed before RMSProp, as there.
  """

  def init_fn(params):
    del params
    return NonFiniteState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    bad = jax.tree.map(lambda g: jnp.logical_not(jnp.all(jnp.isfinite(g))), updates)
    updates = jax.tree.map(lambda g, b: jnp.where(b, jnp.zeros_like(g), g), updates, bad)
    n_bad = sum(b.astype(jnp.int32) for b in jax.tree.leaves(bad))
    return updates, NonFiniteState(state.total + n_bad, jnp.asarray(n_bad, jnp.int32))

  return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """lr * 0.1^(epoch / 1000), applied once an epoch, floored at min_learning_rate."""
  return optax.exponential_decay(
      init_value=optimizer_config.learning_rate, transition_steps=steps_per_epoch,
      decay_rate=LR_DECAY_PER_EPOCH, staircase=True,
      end_value=optimizer_config.min_learning_rate)


def make_optimizer(optimizer_config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """RemoveNotFinite, then RMSProp (the reference code's) or Adam.

  RMSProp: decay 0.9, 1e-10 floor, no bias correction. Blocks' RMSProp
  divides by max(sqrt(ms), 1e-10); optax by sqrt(ms) + 1e-10
  (eps_in_sqrt=False). They differ only when sqrt(ms) is below ~1e-9.
  Adam (optax defaults): for the Table 1 experiments, which the paper trained
  with SFO, a quasi-Newton method optax does not have.
  """
  schedule = learning_rate_schedule(optimizer_config, steps_per_epoch)
  if optimizer_config.name == "adam":
    update = optax.adam(schedule)
  else:
    update = optax.rmsprop(schedule, decay=optimizer_config.rmsprop_decay,
                           eps=optimizer_config.rmsprop_eps, eps_in_sqrt=False,
                           bias_correction=False)
  return optax.chain(zero_nonfinite_per_tensor(), update)


def nonfinite_total(opt_state) -> jax.Array:
  """Tensors zeroed by zero_nonfinite_per_tensor over the whole run."""
  return opt_state[0].total


def nonfinite_last(opt_state) -> jax.Array:
  """Tensors zeroed at the latest step."""
  return opt_state[0].last
