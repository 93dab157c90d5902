"""Binomial diffusion: the forward process of binary data (paper Table App.1, right column).

Each dimension is a bit. The forward kernel mixes the bit with a draw from
the stationary Bernoulli(p):

  q(x_t | x_{t-1}) = B(x_t; x_{t-1} (1 - beta_t) + p beta_t),

so q(x_t = 1 | x_0) = x_0 abar_t + p (1 - abar_t), abar_t = prod_{s<=t}
(1 - beta_s), and with beta = 1 at the last step x_{T-1} ~ B(p) whatever
x_0. The reverse kernel p(x_{t-1} | x_t) = B(x_{t-1}; f_b(x_t, t)) is the
model's. The bound is the Gaussian process's (dpm_jax.diffusion), with
Bernoulli KLs and entropies. Time steps are t = 0 .. T-1 as there.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from dpm_jax import diffusion
from dpm_jax import schedule

# Rates are kept this far inside (0, 1), so that logs stay finite.
EPS = 1e-7


def bernoulli_entropy(p: jax.Array) -> jax.Array:
  """H(B(p)) = -p log p - (1 - p) log(1 - p), elementwise, nats."""
  p = jnp.clip(p, EPS, 1.0 - EPS)
  return -p * jnp.log(p) - (1.0 - p) * jnp.log1p(-p)


def bernoulli_kl(q: jax.Array, p: jax.Array) -> jax.Array:
  """KL(B(q) || B(p)) elementwise, nats."""
  q = jnp.clip(q, EPS, 1.0 - EPS)
  p = jnp.clip(p, EPS, 1.0 - EPS)
  return q * (jnp.log(q) - jnp.log(p)) + (1.0 - q) * (jnp.log1p(-q) - jnp.log1p(-p))


def erase_fraction_schedule(trajectory_length: int) -> np.ndarray:
  """beta_t = 1 / (T - t + 1) for the paper's t = 1 .. T (section 2.4.1).

  Each step erases a constant 1/T of the original signal: abar = 1 - t / T,
  and beta = 1 at the last step. Returned 0-indexed, shape (T,).
  """
  T = trajectory_length
  return 1.0 / (T - np.arange(T, dtype=np.float64))


@flax.struct.dataclass
class BinomialDiffusion:
  """Binomial diffusion of bits towards independent Bernoulli(p)."""
  beta: jax.Array  # (T,)
  p: jax.Array     # the stationary probability of a 1, scalar

  @property
  def trajectory_length(self) -> int:
    return self.beta.shape[0]

  def _abar(self, t, like):
    return diffusion.per_t(schedule.at_t(schedule.alpha_cum(self.beta), t), like)

  def _beta(self, t, like):
    return diffusion.per_t(schedule.at_t(self.beta, t), like)

  def forward_rate(self, x, t):
    """q(x_t = 1 | x_{t-1} = x): the step t forward kernel's rate."""
    beta_t = self._beta(t, x)
    return x * (1.0 - beta_t) + self.p * beta_t

  def marginal_rate(self, x_0, t):
    """q(x_t = 1 | x_0)."""
    abar_t = self._abar(t, x_0)
    return x_0 * abar_t + self.p * (1.0 - abar_t)

  @staticmethod
  def draw_noise(key, shape, dtype):
    """U(0, 1): a bit is 1 where the uniform falls below its rate."""
    return jax.random.uniform(key, shape, dtype)

  def q_sample(self, x_0, t, noise):
    """x_t ~ q(x_t | x_0), driven by uniform `noise` (shape of x_0)."""
    return (noise < self.marginal_rate(x_0, t)).astype(x_0.dtype)

  def posterior(self, x_0, x_t, t):
    """q(x_{t-1} = 1 | x_t, x_0), by Bayes' rule on one step; t >= 1."""
    a = self.marginal_rate(x_0, t - 1)                      # q(x_{t-1} = 1 | x_0)
    from_one = self.forward_rate(jnp.ones_like(x_t), t)     # q(x_t = 1 | x_{t-1} = 1)
    from_zero = self.forward_rate(jnp.zeros_like(x_t), t)   # q(x_t = 1 | x_{t-1} = 0)
    like_one = jnp.where(x_t > 0.5, from_one, 1.0 - from_one)
    like_zero = jnp.where(x_t > 0.5, from_zero, 1.0 - from_zero)
    return a * like_one / (a * like_one + (1.0 - a) * like_zero)

  @staticmethod
  def kl(q, p):
    return bernoulli_kl(q, p)

  def entropies(self, x_0) -> diffusion.BoundEntropies:
    """H_q(X_1 | X_0), H_q(X_T | X_0) and H_p(X_T) = H(p), per dimension."""
    T = self.trajectory_length
    return diffusion.BoundEntropies(
        bernoulli_entropy(self.marginal_rate(x_0, jnp.zeros(()))),
        bernoulli_entropy(self.marginal_rate(x_0, jnp.full((), T - 1.0))),
        bernoulli_entropy(self.p))

  def prior_sample(self, key, shape, dtype=jnp.float32):
    """x_{T-1} ~ B(p) independently."""
    return (jax.random.uniform(key, shape) < self.p).astype(dtype)

  @staticmethod
  def reverse_sample(rate, key):
    return (jax.random.uniform(key, rate.shape) < rate).astype(rate.dtype)

  def first_step(self, x):
    """The fixed reverse kernel of step 0: the forward kernel's rate."""
    return self.forward_rate(x, jnp.zeros(()))
