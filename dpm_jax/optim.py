"""The optimiser: RMSprop (or Adam) after a rule that zeroes non-finite gradients,
with the reference code's learning-rate decay (its train.py: Blocks'
RemoveNotFinite and RMSProp).
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
  """Zeroes each gradient tensor that holds a NaN or Inf, and counts them (NonFiniteState).

  As Blocks' RemoveNotFinite: the other tensors update as usual.
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
  """zero_nonfinite_per_tensor, then RMSProp (the reference code's) or Adam.

  RMSProp: no bias correction; Blocks divides by max(sqrt(ms), eps), optax
  by sqrt(ms) + eps (eps_in_sqrt=False): they differ only when sqrt(ms) is
  below ~1e-9. Adam (optax defaults) is for the Table 1 experiments, which
  the paper trained with SFO, a quasi-Newton method optax does not have.
  """
  schedule = learning_rate_schedule(optimizer_config, steps_per_epoch)
  if optimizer_config.name == "adam":
    update = optax.adam(schedule)
  else:
    update = optax.rmsprop(schedule, decay=optimizer_config.rmsprop_decay,
                           eps=optimizer_config.rmsprop_eps, eps_in_sqrt=False,
                           bias_correction=False)
  return optax.chain(zero_nonfinite_per_tensor(), update)


def nonfinite_counts(opt_state) -> NonFiniteState:
  """The NonFiniteState of a make_optimizer state."""
  return opt_state[0]
