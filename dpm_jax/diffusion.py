"""The diffusion probabilistic model: forward process, reverse kernel and bound.

Reference: `model.py` of the 2015 code (DiffusionModel). The Flax module holds
the network and, when the schedule is learned, its basis coefficients; the
math is written as pure functions of arrays so each piece can be tested on
its own against a closed form.

Conventions: images NHWC; t an integer (or fractional) time step in
[1, T-1], either a scalar for the whole minibatch or one per example, shape
(B,); per-t quantities broadcast as (B, 1, 1, 1).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from dpm_jax import config as config_lib
from dpm_jax import networks
from dpm_jax import schedule

LN2 = math.log(2.0)


def gaussian_entropy(variance):
  """H(v) = 0.5 (1 + log 2 pi) + 0.5 log v: differential entropy of N(., v), nats."""
  return 0.5 * (1.0 + math.log(2.0 * math.pi)) + 0.5 * jnp.log(variance)


def normal_kl(mu_q, sigma_q, mu_p, sigma_p):
  """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) elementwise, in nats."""
  return (jnp.log(sigma_p) - jnp.log(sigma_q)
          + (sigma_q**2 + (mu_q - mu_p)**2) / (2.0 * sigma_p**2) - 0.5)


def _per_t(x, like):
  """Reshapes a scalar or per-example value to broadcast against NHWC `like`."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


def forward_diffusion_sample(x_0, t, beta_arr, *, noise, uniform, uniform_noise):
  """Corrupts x_0 to x_t and returns the posterior q(x_{t-1} | x_t, x_u).

  Args:
    x_0: clean images (B, H, W, C) in scaled units.
    t: time step(s), scalar or (B,).
    beta_arr: (T,) forward variances.
    noise: standard normal draws, shape of x_0.
    uniform: U(0, 1) draws, shape of x_0 (dequantisation).
    uniform_noise: width of the dequantisation noise in scaled units.

  Returns:
    (x_t, mu_posterior, sigma_posterior, x_u); sigma_posterior broadcasts.
  """
  x_u = x_0 + (uniform - 0.5) * uniform_noise
  beta_t = _per_t(schedule.at_t(beta_arr, t), x_0)
  abar_t = _per_t(schedule.at_t(schedule.alpha_cum(beta_arr), t), x_0)
  x_t = x_u * jnp.sqrt(abar_t) + noise * jnp.sqrt(1.0 - abar_t)
  mu_q, sigma_q = posterior(x_u, x_t, beta_t, abar_t)
  return x_t, mu_q, sigma_q, x_u


def posterior(x_u, x_t, beta_t, abar_t):
  """Mean and standard deviation of q(x_{t-1} | x_t, x_u).

  The product of q(x_{t-1} | x_u) = N(sqrt(abar_{t-1}) x_u, 1 - abar_{t-1})
  and the likelihood of x_t under the step t forward kernel, read as a
  Gaussian in x_{t-1}: N(x_t / sqrt(alpha_t), beta_t / alpha_t).
  """
  alpha_t = 1.0 - beta_t
  cov1 = 1.0 - abar_t / alpha_t
  cov2 = beta_t / alpha_t
  lam = 1.0 / cov1 + 1.0 / cov2
  mu = (x_u * jnp.sqrt(abar_t / alpha_t) / cov1
        + x_t / jnp.sqrt(alpha_t) / cov2) / lam
  return mu, jnp.sqrt(1.0 / lam)


def reverse_kernel(x_t, mu_coeff, beta_coeff, beta_t, trajectory_length: int,
                   link: str = "logit"):
  """The reverse step p(x_{t-1} | x_t) = N(mu, sigma^2) from network outputs.

  beta_rev = sigmoid(beta_coeff / sqrt(T) + logit(beta_t)),
  mu = x_t sqrt(1 - beta_t) + mu_coeff sqrt(beta_t), sigma = sqrt(beta_rev).
  """
  beta_t = _per_t(beta_t, x_t)
  offset = schedule.logit(beta_t) if link == "logit" else jnp.log(beta_t)
  beta_rev = jax.nn.sigmoid(beta_coeff / math.sqrt(trajectory_length) + offset)
  mu = x_t * jnp.sqrt(1.0 - beta_t) + mu_coeff * jnp.sqrt(beta_t)
  return mu, jnp.sqrt(beta_rev)


def bound_terms(beta_arr):
  """The bound's t-independent entropy terms, in nats per dimension.

  Returns (H_startpoint, H_endpoint, H_prior): H(beta_0), H(1 - abar_{T-1})
  and H(1).
  """
  beta_full = 1.0 - jnp.exp(jnp.sum(jnp.log(1.0 - beta_arr)))
  return (gaussian_entropy(beta_arr[0]), gaussian_entropy(beta_full),
          gaussian_entropy(jnp.ones((), beta_arr.dtype)))


def kl_multiplier(config) -> int:
  """T - 1 learned steps by default; T as the reference code."""
  T = config.trajectory_length
  return T - 1 if config.kl_multiplier == "T-1" else T


def bound_bits(kl, beta_arr, *, multiplier: int, n_colors: int, axis=None):
  """-(K - L_null) in bits per pixel from a one-t KL estimate (nats per dim).

  negL_bound = KL * multiplier + H(beta_0) - H(1 - abar_{T-1}) + H(1), and the
  null model (unit isotropic Gaussian) has negL = H(1); the difference is
  averaged over dimensions and multiplied by n_colors.

  Args:
    kl: per-dimension KL(q || p) at one sampled t, any shape.
    beta_arr: (T,) forward variances.
    multiplier: T - 1 (unbiased) or T (reference code).
    n_colors: colour channels summed per pixel.
    axis: axes to average over; None for all.

  Returns:
    The cost the reference code minimises: positive is worse than the null.
  """
  h_start, h_end, _ = bound_terms(beta_arr)
  neg_l_diff = kl * multiplier + h_start - h_end  # + H(1) - H(1)
  return jnp.mean(neg_l_diff, axis=axis) / LN2 * n_colors


class DiffusionModel(nn.Module):
  """The 2015 Gaussian diffusion model's learned reverse process.

  Attributes:
    config: the model config (dpm_jax.config); validated and frozen on use.
  """
  config: ml_collections.FrozenConfigDict

  def setup(self):
    cfg = self.config
    self.network = networks.MLPConvDense(cfg)
    self.basis = schedule.temporal_basis(cfg.trajectory_length, cfg.n_temporal_basis)
    if cfg.learn_beta:
      self.beta_perturb_coefficients = self.param(
          "beta_perturb_coefficients", nn.initializers.zeros,
          (cfg.n_temporal_basis,), jnp.float32)

  def __call__(self, x_t, t, deterministic: bool = True):
    """Returns (mu, sigma) of p(x_{t-1} | x_t); also what `init` traces."""
    return self.get_mu_sigma(x_t, t, deterministic)

  def beta_arr(self, dtype=None):
    """The forward variances beta_t, shape (T,)."""
    cfg = self.config
    coeffs = self.beta_perturb_coefficients if cfg.learn_beta else None
    if coeffs is not None and dtype is not None:
      coeffs = coeffs.astype(dtype)
    return schedule.beta_schedule(cfg.trajectory_length, cfg.step1_beta, self.basis,
                                  coeffs, link=cfg.beta_link, dtype=dtype)

  def network_output(self, x, deterministic: bool = True):
    """Z: per-pixel basis coefficients, (B, H, W, n_colors * 2 * J)."""
    return self.network(x, deterministic)

  def get_mu_sigma(self, x_t, t, deterministic: bool = True):
    """Mean and standard deviation of the reverse step at t."""
    cfg = self.config
    # The readout at t is folded into the network's last layer (see
    # schedule.folded_readout): the same values as reading out network_output.
    weights = schedule.readout_weights(t, jnp.asarray(self.basis, x_t.dtype))
    fold = functools.partial(schedule.folded_readout, weights=weights, n_colors=cfg.n_colors)
    coeffs = self.network(x_t, deterministic, fold)
    mu_coeff, beta_coeff = coeffs[..., 0], coeffs[..., 1]
    beta_t = schedule.at_t(self.beta_arr(x_t.dtype), t)
    return reverse_kernel(x_t, mu_coeff, beta_coeff, beta_t,
                          cfg.trajectory_length, cfg.beta_link)


def make_model(model_config) -> DiffusionModel:
  """Validates a model config and builds the Flax module."""
  return DiffusionModel(config_lib.frozen(model_config))


def init_params(model: DiffusionModel, rng) -> Any:
  """Initialises the parameters for the model's image shape, batch of 1."""
  cfg = model.config
  x = jnp.zeros((1, cfg.spatial_width, cfg.spatial_width, cfg.n_colors), jnp.float32)
  return model.init(rng, x, jnp.ones((), jnp.float32))


def sample_t(rng, trajectory_length: int, shape=()):
  """t uniform on {1, ..., T-1}: step 0 is fixed, so it is never learned."""
  return jax.random.randint(rng, shape, 1, trajectory_length)


class Draws(NamedTuple):
  """The random draws of one t-sample of the bound (see make_loss_fn)."""
  t: jax.Array        # scalar, or (B,) with one t per example
  noise: jax.Array    # N(0, 1), shape of the images
  uniform: jax.Array  # U(0, 1), shape of the images (dequantisation)
  dropout: jax.Array  # PRNG key for dropout


def _loss_parts(model: DiffusionModel, uniform_noise: float, train: bool):
  """draw(rng, images) -> Draws and loss_from_draws(params, images, draws) -> (loss, aux)."""
  cfg = model.config
  T = cfg.trajectory_length
  multiplier = kl_multiplier(cfg)
  per_example = cfg.t_sampling == "per_example"
  deterministic = not train or cfg.dropout_rate == 0.0

  def draw(rng, images) -> Draws:
    rng_t, rng_noise, rng_unif, rng_drop = jax.random.split(rng, 4)
    t = sample_t(rng_t, T, images.shape[:1] if per_example else ())
    return Draws(t, jax.random.normal(rng_noise, images.shape, images.dtype),
                 jax.random.uniform(rng_unif, images.shape, images.dtype), rng_drop)

  def loss_from_draws(params, images, d: Draws):
    t = d.t.astype(images.dtype)
    beta_arr = model.apply(params, images.dtype, method=DiffusionModel.beta_arr)
    x_t, mu_q, sigma_q, _ = forward_diffusion_sample(
        images, t, beta_arr, noise=d.noise, uniform=d.uniform, uniform_noise=uniform_noise)
    mu, sigma = model.apply(params, x_t, t, deterministic, method=DiffusionModel.get_mu_sigma,
                            rngs=None if deterministic else {"dropout": d.dropout})
    kl = normal_kl(mu_q, sigma_q, mu, sigma)
    loss = bound_bits(kl, beta_arr, multiplier=multiplier, n_colors=cfg.n_colors)
    return loss, {"kl_nats": jnp.mean(kl), "t_mean": jnp.mean(d.t.astype(jnp.float32))}

  return draw, loss_from_draws


def _t_keys(rng, n_t: int):
  # One t per minibatch uses the key as given; several split it.
  return [rng] if n_t == 1 else list(jax.random.split(rng, n_t))


def _mean(results):
  return jax.tree.map(lambda *xs: sum(xs) / len(xs), *results)


def make_loss_fn(model: DiffusionModel, *, uniform_noise: float = 0.0,
                 train: bool = True) -> Callable:
  """Builds loss_fn(params, images, rng) -> (loss, metrics).

  The loss is the bound -(K - L_null) in bits per pixel for one random t per
  minibatch (or per example, model.t_sampling), averaged over
  n_t_per_minibatch draws, as the reference code. All randomness comes from
  splitting `rng`.

  Args:
    model: the DiffusionModel.
    uniform_noise: dequantisation width in scaled units.
    train: applies dropout (when configured) if True.

  Returns:
    A pure, jittable function of (params, images, rng).
  """
  draw, loss_from_draws = _loss_parts(model, uniform_noise, train)

  def loss_fn(params, images, rng):
    results = [loss_from_draws(params, images, draw(key, images))
               for key in _t_keys(rng, model.config.n_t_per_minibatch)]
    loss, aux = _mean(results)
    return loss, {"loss": loss, **aux}

  return loss_fn


def make_loss_and_grad_fn(model: DiffusionModel, *, uniform_noise: float = 0.0,
                          train: bool = True, micro_batch_size: int = 0,
                          mesh: Optional[Mesh] = None) -> Callable:
  """fn(params, images, rng) -> ((loss, metrics), grads) of make_loss_fn's loss.

  With micro_batch_size > 0 the gradient is accumulated over micro-batches in
  a lax.scan, every micro-batch using its slice of the same draws (the same
  t), so the result equals the whole-batch gradient up to float summation
  order; only the memory of one micro-batch is live at a time, which is
  faster on CPUs.

  With a mesh of several devices (axis 'data', dpm_jax.parallel) and the
  batch sharded over it, each device computes the loss and gradient of its
  part of the batch (micro-batched as above) under shard_map, from its slice
  of the same draws, and the parts are averaged: the one-device result up to
  float summation order. Dropout masks are drawn per device and micro-batch.
  """
  draw, loss_from_draws = _loss_parts(model, uniform_noise, train)
  grad_fn = jax.value_and_grad(loss_from_draws, has_aux=True)
  per_example = model.config.t_sampling == "per_example"
  m = micro_batch_size

  def local(params, images, d: Draws):
    b = images.shape[0]
    if not m or m == b:
      return grad_fn(params, images, d)
    if b % m:
      raise ValueError(f"micro_batch_size={m} does not divide the batch of {b}.")

    def micro(i):
      take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * m, m)
      return take(images), Draws(take(d.t) if per_example else d.t, take(d.noise),
                                 take(d.uniform), jax.random.fold_in(d.dropout, i))

    def body(acc, i):
      return jax.tree.map(jnp.add, acc, grad_fn(params, *micro(i))), None

    zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                        jax.eval_shape(lambda: grad_fn(params, *micro(0))))
    total, _ = jax.lax.scan(body, zero, jnp.arange(b // m))
    return jax.tree.map(lambda a: a / (b // m), total)

  if mesh is not None and mesh.size > 1:
    axis = mesh.axis_names[0]
    one_device = local

    def local(params, images, d: Draws):
      d = d._replace(dropout=jax.random.fold_in(d.dropout, jax.lax.axis_index(axis)))
      return jax.lax.pmean(one_device(params, images, d), axis)

    batch = PartitionSpec(axis)
    draws_spec = Draws(batch if per_example else PartitionSpec(), batch, batch, PartitionSpec())
    # The replicated parameters and the averaged outputs need no varying-axis
    # tracking: nothing is differentiated through the shard_map.
    local = jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), batch, draws_spec),
                          out_specs=PartitionSpec(), check_vma=False)

  def loss_and_grad(params, images, rng):
    results = [local(params, images, draw(key, images))
               for key in _t_keys(rng, model.config.n_t_per_minibatch)]
    (loss, aux), grads = _mean(results)
    return (loss, {"loss": loss, **aux}), grads

  return loss_and_grad


def get_norms(params, grads=None):
  """Per-parameter L2 norm divided by its number of elements (the seed's get_norms).

  Returns:
    {'norm/<path>': ..., 'grad_norm/<path>': ...} with '/'-joined parameter paths.
  """
  out = {}
  for prefix, tree in (("norm", params), ("grad_norm", grads)):
    if tree is None:
      continue
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name = "/".join(str(getattr(k, "key", k)) for k in path)
      out[f"{prefix}/{name}"] = jnp.sqrt(jnp.sum(jnp.square(leaf))) / np.prod(leaf.shape)
  return out


def count_params(params) -> int:
  """Total number of scalar parameters."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
