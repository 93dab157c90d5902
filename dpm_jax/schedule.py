"""The forward-process schedule and the temporal basis of the reverse model.

Reference: `model.py` of the 2015 code, `generate_temporal_basis`,
`generate_beta_arr`, `get_t_weights` and `temporal_readout`. Time steps are
t = 0 .. T-1, T = trajectory_length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MIN_BETA = 1e-6
MAX_BETA_MARGIN = 1e-5


def logit(u):
  """log(u / (1 - u)), the inverse of the logistic sigmoid."""
  return jnp.log(u / (1.0 - u))


def temporal_basis(trajectory_length: int, n_temporal_basis: int) -> np.ndarray:
  """Gaussian bumps over time: a float64 array (J, T), J = n_temporal_basis.

  Centres at linspace(-1, 1, J), read at linspace(-1, 1, T); column t holds
  the weights of the J basis functions at time step t and sums to 1.
  """
  if n_temporal_basis < 2:
    raise ValueError("n_temporal_basis must be >= 2, got %d" % n_temporal_basis)
  xx = np.linspace(-1.0, 1.0, trajectory_length)
  centres = np.linspace(-1.0, 1.0, n_temporal_basis)
  width = (centres[1] - centres[0]) / 2.0
  basis = np.exp(-(xx[:, None] - centres[None, :]) ** 2 / (2.0 * width**2))
  basis /= basis.sum(axis=1, keepdims=True)
  return basis.T


def beta_baseline(trajectory_length: int) -> np.ndarray:
  """1 / linspace(T, 2, T): destroys a constant fraction of the remaining signal per step."""
  return 1.0 / np.linspace(trajectory_length, 2.0, trajectory_length)


def beta_schedule(trajectory_length: int,
                  step1_beta: float,
                  basis,
                  perturb_coefficients=None,
                  *,
                  link: str = "logit",
                  dtype=None) -> jax.Array:
  """The forward noise variances beta_t, t = 0 .. T-1: beta_arr of shape (T,).

  beta_t = m_t + sigmoid(perturb_t + link(b_t)) * (1 - m_t - 1e-5), with
  b = 1 / linspace(T, 2, T), m_t = 1e-6 (+ step1_beta at t = 0) and
  perturb = basis^T c.

  Args:
    trajectory_length: T.
    step1_beta: the extra variance of the first step (the model's minimum).
    basis: the (J, T) temporal basis.
    perturb_coefficients: c, shape (J,), or None for zeros (the reference code).
    link: 'logit' as the reference code, or 'log' as the seed notebook.
    dtype: the result's dtype; defaults to that of the coefficients, else
      JAX's default float.
  """
  if link == "logit":
    offset = np.log(beta_baseline(trajectory_length) /
                    (1.0 - beta_baseline(trajectory_length)))
  elif link == "log":
    offset = np.log(beta_baseline(trajectory_length))
  else:
    raise ValueError(f"link must be 'logit' or 'log', got {link!r}")
  if dtype is None:
    dtype = (jnp.result_type(perturb_coefficients) if perturb_coefficients
             is not None else jnp.result_type(float))
  min_beta = np.full((trajectory_length,), MIN_BETA)
  min_beta[0] += step1_beta
  min_beta = jnp.asarray(min_beta, dtype)
  pre = jnp.asarray(offset, dtype)
  if perturb_coefficients is not None:
    pre = pre + jnp.asarray(basis, dtype).T @ perturb_coefficients
  return min_beta + jax.nn.sigmoid(pre) * (1.0 - min_beta - MAX_BETA_MARGIN)


def t_weights(t, trajectory_length: int) -> jax.Array:
  """Triangular interpolation weights max(0, 1 - |t - i|) over i = 0 .. T-1.

  One-hot for integer t, linear interpolation otherwise; shape t.shape + (T,).
  """
  t = jnp.asarray(t)
  dtype = t.dtype if jnp.issubdtype(t.dtype, jnp.floating) else jnp.result_type(float)
  grid = jnp.arange(trajectory_length, dtype=dtype)
  return jnp.maximum(0.0, 1.0 - jnp.abs(t.astype(dtype)[..., None] - grid))


def at_t(values, t) -> jax.Array:
  """Reads a per-time-step array (T,) at (possibly fractional) t in [0, T-1].

  t_weights(t, T) @ values, read with two gathers instead of a (..., T) matrix.
  """
  T = values.shape[0]
  t = jnp.asarray(t).astype(values.dtype)
  lo = jnp.clip(jnp.floor(t), 0, T - 1)
  w = t - lo
  lo_i = lo.astype(jnp.int32)
  return values[lo_i] * (1.0 - w) + values[jnp.minimum(lo_i + 1, T - 1)] * w


def alpha_cum(beta_arr) -> jax.Array:
  """abar_t = prod_{s <= t} (1 - beta_s)."""
  return jnp.cumprod(1.0 - beta_arr)


def readout_weights(t, basis) -> jax.Array:
  """The temporal basis read at t: (J,) for a scalar t, (B, J) for one t per example."""
  basis = jnp.asarray(basis)
  return t_weights(t, basis.shape[1]).astype(basis.dtype) @ basis.T


def folded_readout(h, kernel, bias, weights, n_colors: int):
  """The last layer and the temporal readout in one: temporal_readout(h @ kernel + bias).

  The readout is linear, so it is applied to the layer's kernel and bias
  first: one matmul with n_colors * 2 outputs instead of n_colors * 2 * J.

  Args:
    h: the last hidden layer, (B, H, W, K).
    kernel, bias: the last layer's parameters, (K, n_colors * 2 * J), (n_colors * 2 * J,).
    weights: readout_weights(t, basis), (J,) or (B, J).
    n_colors: colour channels.

  Returns:
    (B, H, W, n_colors, 2): mu_coeff at [..., 0], beta_coeff at [..., 1].
  """
  n_basis = weights.shape[-1]
  weights = weights.astype(h.dtype)
  k = kernel.reshape(kernel.shape[0], n_colors, 2, n_basis)
  b = bias.reshape(n_colors, 2, n_basis)
  if weights.ndim == 1:
    out = h @ (k @ weights).reshape(-1, n_colors * 2) + (b @ weights).reshape(n_colors * 2)
  else:
    k_eff = jnp.einsum("kcmj,bj->bkcm", k, weights).reshape(weights.shape[0], -1, n_colors * 2)
    b_eff = jnp.einsum("cmj,bj->bcm", b, weights).reshape(weights.shape[0], 1, 1, n_colors * 2)
    out = jnp.einsum("bxyk,bko->bxyo", h, k_eff) + b_eff
  return out.reshape(h.shape[:-1] + (n_colors, 2))


def temporal_readout(z, t, basis, n_colors: int):
  """Reads the network's per-pixel basis coefficients out at time step t (the 2015 code's form).

  Args:
    z: network output, (B, H, W, n_colors * 2 * J), read as (colors, {mu, beta}, J).
    t: a scalar time step, or one per example, shape (B,).
    basis: the (J, T) temporal basis.
    n_colors: number of colour channels.

  Returns:
    (mu_coeff, beta_coeff), each (B, H, W, n_colors).
  """
  n_basis = basis.shape[0]
  coeff_weights = readout_weights(t, jnp.asarray(basis, z.dtype))  # (..., J)
  z = z.reshape(z.shape[:3] + (n_colors, 2, n_basis))
  if coeff_weights.ndim == 1:
    concat = z @ coeff_weights
  else:
    concat = jnp.einsum("bhwcmj,bj->bhwcm", z, coeff_weights)
  return concat[..., 0], concat[..., 1]
