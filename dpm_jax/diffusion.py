"""The diffusion probabilistic model: the forward process, the bound K and loss_fn.

Paper (Sohl-Dickstein et al. 2015), sections 2.1-2.4; reference code: model.py.

A forward process q(x_{0..T-1}) has the paper's pieces (Table App.1): its
noise, the marginal q(x_t | x_0) as a function of that noise (`q_sample`),
the posterior q(x_{t-1} | x_t, x_0), the KL between two of its step
distributions, and the bound's entropies. This module holds the Gaussian
process, dpm_jax.binomial the binomial one. The first axis is the batch,
every other axis a dimension.

A model is a Flax module with
  `config`      trajectory_length, kl_multiplier, t_sampling,
                n_t_per_minibatch, dropout_rate (see dpm_jax.config);
  `Process`     its forward process's class;
  `data_shape`  the shape of one example;
  `unit_dims`   dimensions per reported unit (the colour channels of a pixel,
                or every dimension of a sequence or a point);
  `process(dtype)`                  the forward process, from its parameters;
  `reverse(x_t, t, deterministic)`  the reverse kernel p(x_{t-1} | x_t).

Time steps are t = 0 .. T-1 (T = trajectory_length); step 0 is fixed, the
reverse kernel is learned for t = 1 .. T-1. t is a scalar for the whole batch
or one per example, shape (B,).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import kernels
from dpm_jax import networks
from dpm_jax import schedule

PyTree = Any  # parameters, states: nested dicts of arrays

LN2 = math.log(2.0)


def gaussian_entropy(variance: jax.Array) -> jax.Array:
  """H(v) = 0.5 (1 + log 2 pi) + 0.5 log v: differential entropy of N(., v), nats."""
  return 0.5 * (1.0 + math.log(2.0 * math.pi)) + 0.5 * jnp.log(variance)


def normal_kl(mu_q: jax.Array, sigma_q: jax.Array, mu_p: jax.Array,
              sigma_p: jax.Array) -> jax.Array:
  """KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) elementwise, in nats."""
  return (jnp.log(sigma_p) - jnp.log(sigma_q)
          + (sigma_q**2 + (mu_q - mu_p)**2) / (2.0 * sigma_p**2) - 0.5)


def per_t(x: jax.Array, like: jax.Array) -> jax.Array:
  """Reshapes a scalar or per-example value (B,) to broadcast against `like`."""
  x = jnp.asarray(x)
  if x.ndim == 0:
    return x
  return x.reshape(x.shape + (1,) * (like.ndim - x.ndim))


def posterior(x_0: jax.Array, x_t: jax.Array, beta_t: jax.Array,
              abar_t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation of q(x_{t-1} | x_t, x_0).

  The product of q(x_{t-1} | x_0) = N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1})
  and the likelihood of x_t under the step t forward kernel, read as a
  Gaussian in x_{t-1}: N(x_t / sqrt(alpha_t), beta_t / alpha_t).
  """
  alpha_t = 1.0 - beta_t
  cov1 = 1.0 - abar_t / alpha_t
  cov2 = beta_t / alpha_t
  lam = 1.0 / cov1 + 1.0 / cov2
  mu = (x_0 * jnp.sqrt(abar_t / alpha_t) / cov1
        + x_t / jnp.sqrt(alpha_t) / cov2) / lam
  return mu, jnp.sqrt(1.0 / lam)


class BoundEntropies(NamedTuple):
  """The bound's entropy terms per dimension, in nats (paper eq. 14).

  start: H_q(X_1 | X_0), the first step's; end: H_q(X_T | X_0);
  prior: H_p(X_T), the reverse process's starting distribution, which is also
  the null model (its log likelihood L_null = -prior per dimension).
  """
  start: Any
  end: Any
  prior: Any


@flax.struct.dataclass
class GaussianDiffusion:
  """q(x_t | x_{t-1}) = N(x_{t-1} sqrt(1 - beta_t), beta_t), t = 0 .. T-1.

  Towards N(0, I); x_t = x_0 sqrt(abar_t) + sqrt(1 - abar_t) noise, with
  abar_t = prod_{s <= t} (1 - beta_s) and noise ~ N(0, I).
  """
  beta: jax.Array  # (T,)
  # How the reverse variance is read against beta_t (see reverse_kernel).
  link: str = flax.struct.field(pytree_node=False, default="logit")

  @property
  def trajectory_length(self) -> int:
    return self.beta.shape[0]

  @staticmethod
  def draw_noise(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)

  def q_sample(self, x_0, t, noise):
    """x_t ~ q(x_t | x_0), driven by `noise` (shape of x_0)."""
    abar_t = per_t(schedule.at_t(schedule.alpha_cum(self.beta), t), x_0)
    return x_0 * jnp.sqrt(abar_t) + noise * jnp.sqrt(1.0 - abar_t)

  def posterior(self, x_0, x_t, t):
    """(mu, sigma) of q(x_{t-1} | x_t, x_0)."""
    beta_t = per_t(schedule.at_t(self.beta, t), x_0)
    abar_t = per_t(schedule.at_t(schedule.alpha_cum(self.beta), t), x_0)
    return posterior(x_0, x_t, beta_t, abar_t)

  @staticmethod
  def kl(q, p):
    """KL(q || p) per dimension between two (mu, sigma) Gaussians, nats."""
    return normal_kl(*q, *p)

  def entropies(self, x_0) -> BoundEntropies:
    """H(beta_0), H(1 - abar_{T-1}) and H(1), whatever x_0."""
    del x_0
    beta_full = 1.0 - jnp.exp(jnp.sum(jnp.log(1.0 - self.beta)))
    return BoundEntropies(gaussian_entropy(self.beta[0]), gaussian_entropy(beta_full),
                          gaussian_entropy(jnp.ones((), self.beta.dtype)))

  @staticmethod
  def prior_sample(key, shape, dtype=jnp.float32):
    """x_{T-1} ~ N(0, I), where the reverse trajectory starts."""
    return jax.random.normal(key, shape, dtype)

  @staticmethod
  def reverse_sample(p, key):
    """x_{t-1} ~ p(x_{t-1} | x_t) = N(mu, sigma^2)."""
    mu, sigma = p
    return mu + sigma * jax.random.normal(key, mu.shape, mu.dtype)

  def first_step(self, x):
    """The fixed reverse kernel of step 0: N(x sqrt(1 - beta_0), beta_0)."""
    return reverse_kernel(x, 0.0, 0.0, self.beta[0], self.trajectory_length, self.link)


def reverse_kernel(x_t: jax.Array, mu_coeff: jax.Array, beta_coeff: jax.Array, beta_t: jax.Array,
                   trajectory_length: int, link: str = "logit") -> tuple[jax.Array, jax.Array]:
  """The reverse step p(x_{t-1} | x_t) = N(mu, sigma^2) from network outputs.

  beta_rev = sigmoid(beta_coeff / sqrt(T) + logit(beta_t)),
  mu = x_t sqrt(1 - beta_t) + mu_coeff sqrt(beta_t), sigma = sqrt(beta_rev).
  """
  beta_t = per_t(beta_t, x_t)
  offset = schedule.logit(beta_t) if link == "logit" else jnp.log(beta_t)
  beta_rev = jax.nn.sigmoid(beta_coeff / math.sqrt(trajectory_length) + offset)
  mu = x_t * jnp.sqrt(1.0 - beta_t) + mu_coeff * jnp.sqrt(beta_t)
  return mu, jnp.sqrt(beta_rev)


def kl_multiplier(config: ml_collections.ConfigDict) -> int:
  """T - 1 learned steps by default; T as the reference code."""
  T = config.trajectory_length
  return T - 1 if config.kl_multiplier == "T-1" else T


def kl_at_t(model: nn.Module, params: PyTree, x_0: jax.Array, t: jax.Array, noise: PyTree, *,
            deterministic: bool = True, rngs: Optional[dict] = None) -> tuple[jax.Array, Any]:
  """KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) per dimension, in nats: paper eq. 14's summand.

  Args:
    x_0: data (B, ...) in model units.
    t: time step(s), scalar or (B,), float.
    noise: the forward process's noise, shape of x_0 (Process.draw_noise).

  Returns:
    (kl, process): kl of x_0's shape, and the forward process.
  """
  process = model.apply(params, x_0.dtype, method="process")
  x_t = process.q_sample(x_0, t, noise)
  q = process.posterior(x_0, x_t, t)
  p = model.apply(params, x_t, t, deterministic, method="reverse", rngs=rngs)
  return process.kl(q, p), process


def bound_terms(kl: jax.Array, process: Any, x_0: jax.Array, *, multiplier: int,
                unit_dims: int) -> dict:
  """The terms of -(K - L_null) in bits per unit, from a one-t KL estimate.

  -K = multiplier E_t[KL_t] + H_q(X_1|X_0) - H_q(X_T|X_0) + H_p(X_T) (paper
  eq. 14, t uniform over the multiplier's steps), and the null model is the
  process's stationary distribution, L_null = -H_p(X_T). Every term is a mean
  over dimensions times unit_dims: bits per pixel (colour channels summed)
  for images, per sequence or per point when unit_dims is every dimension.

  Args:
    kl: per-dimension KL at one sampled t (nats), shape of x_0.
    process: the forward process (its entropies).
    x_0: the data the KL was computed on.
    multiplier: T - 1 (unbiased) or T (reference code).
    unit_dims: dimensions per reported unit.

  Returns:
    {'loss': -(K - L_null), 'kl', 'H_start', 'H_end', 'H_prior', 'L_null',
    'K'}, scalars in bits per unit; loss = kl + H_start - H_end + H_prior + L_null.
  """
  h = process.entropies(x_0)
  bits = lambda a: jnp.mean(jnp.broadcast_to(a, kl.shape)) * unit_dims / LN2
  terms = {"kl": bits(kl * multiplier), "H_start": bits(h.start), "H_end": bits(h.end),
           "H_prior": bits(h.prior)}
  terms["L_null"] = -terms["H_prior"]
  terms["K"] = -(terms["kl"] + terms["H_start"] - terms["H_end"] + terms["H_prior"])
  terms["loss"] = terms["L_null"] - terms["K"]
  return terms


def sample_t(rng: jax.Array, trajectory_length: int, shape: tuple = ()) -> jax.Array:
  """t uniform on {1, ..., T-1}: step 0 is fixed, so it is never learned."""
  return jax.random.randint(rng, shape, 1, trajectory_length)


def stratified_t(offset: jax.Array, trajectory_length: int, batch_size: int) -> jax.Array:
  """t of a stratified draw: t_i = 1 + (i + offset) mod (T-1), shape (B,).

  With offset uniform on {0 .. T-2}, every example's t is uniform on
  {1 .. T-1}, so the loss has the expectation of independent uniform draws,
  and every t gets B/(T-1) examples (rounded down or up) in every batch. Any
  run of consecutive examples (a micro-batch, a device's part of the batch)
  is itself a stratified draw, with offset its first t minus 1.
  """
  n = trajectory_length - 1
  return 1 + (jnp.arange(batch_size, dtype=jnp.int32) + offset) % n


def dequantize(x_0: jax.Array, uniform: Optional[jax.Array], width: float) -> jax.Array:
  """x_0 + (U(0, 1) - 0.5) width: continuous data from quantised values."""
  return x_0 if uniform is None else x_0 + (uniform - 0.5) * width


class Draws(NamedTuple):
  """The random draws of a loss, split by how they relate to the batch.

  per_example: leaves with the batch axis first (noise, one t per example);
  shared: the same for the whole batch (one t per minibatch);
  key: keys for randomness that may differ between parts of the batch
    (dropout masks).
  A loss computed on a slice of the batch with the matching slice of
  per_example equals the same slice of the whole batch's loss.
  """
  per_example: Any
  shared: Any
  key: Any


@dataclasses.dataclass(frozen=True)
class StochasticLoss:
  """loss_fn(params, batch, rng) -> (loss, metrics), as apply(params, batch, draw(rng, batch))."""
  draw: Callable[[jax.Array, jax.Array], Draws]
  apply: Callable[[Any, jax.Array, Draws], tuple]

  def __call__(self, params, batch, rng):
    return self.apply(params, batch, self.draw(rng, batch))


def make_loss_fn(model: nn.Module, *, uniform_noise: float = 0.0,
                 train: bool = True) -> StochasticLoss:
  """Builds loss_fn(params, x_0, rng) -> (loss, metrics).

  The loss is the bound -(K - L_null) in bits per unit for one random t per
  minibatch, per example or stratified (config.t_sampling), averaged over
  config.n_t_per_minibatch draws, as the reference code. The metrics hold the
  bound's terms (bound_terms), the mean KL in nats per dimension and the mean t.

  Args:
    uniform_noise: dequantisation width in model units (0: none).
    train: applies dropout (when configured) if True.
  """
  cfg = model.config
  T = cfg.trajectory_length
  multiplier = kl_multiplier(cfg)
  per_example_t = cfg.t_sampling in ("per_example", "stratified")
  deterministic = not train or cfg.dropout_rate == 0.0

  def draw_one(rng, x_0):
    rng_t, rng_noise, rng_unif, rng_drop = jax.random.split(rng, 4)
    if cfg.t_sampling == "stratified":
      t = stratified_t(jax.random.randint(rng_t, (), 0, T - 1), T, x_0.shape[0])
    else:
      t = sample_t(rng_t, T, x_0.shape[:1] if per_example_t else ())
    per_example = {"noise": model.Process.draw_noise(rng_noise, x_0.shape, x_0.dtype),
                   "uniform": (jax.random.uniform(rng_unif, x_0.shape, x_0.dtype)
                               if uniform_noise else None)}
    (per_example if per_example_t else {})["t"] = t
    return per_example, {} if per_example_t else {"t": t}, rng_drop

  def draw(rng, x_0) -> Draws:
    # One t per minibatch uses the key as given; several split it.
    n_t = cfg.n_t_per_minibatch
    keys = [rng] if n_t == 1 else list(jax.random.split(rng, n_t))
    return Draws(*zip(*[draw_one(key, x_0) for key in keys]))

  def apply_one(params, x_0, per_example, shared, key):
    t = {**per_example, **shared}["t"]
    x_0 = dequantize(x_0, per_example["uniform"], uniform_noise)
    kl, process = kl_at_t(model, params, x_0, t.astype(x_0.dtype), per_example["noise"],
                          deterministic=deterministic,
                          rngs=None if deterministic else {"dropout": key})
    terms = bound_terms(kl, process, x_0, multiplier=multiplier, unit_dims=model.unit_dims)
    return {**terms, "kl_nats": jnp.mean(kl), "t_mean": jnp.mean(t.astype(jnp.float32))}

  def apply(params, x_0, draws: Draws):
    metrics = [apply_one(params, x_0, *d) for d in zip(*draws)]
    metrics = jax.tree.map(lambda *xs: sum(xs) / len(xs), *metrics)
    return metrics["loss"], metrics

  return StochasticLoss(draw, apply)


class DiffusionModel(nn.Module):
  """The 2015 Gaussian diffusion model of images: the learned reverse process.

  Attributes:
    config: the model config (dpm_jax.config); validated and frozen on use.
    conv_layer: the convolution layer's kernel (dpm_jax.kernels).
  """
  config: ml_collections.FrozenConfigDict
  conv_layer: Callable = kernels.conv_layer_xla
  Process: ClassVar[type] = GaussianDiffusion

  @property
  def data_shape(self) -> tuple:
    cfg = self.config
    return (cfg.spatial_width, cfg.spatial_width, cfg.n_colors)

  @property
  def unit_dims(self) -> int:
    return self.config.n_colors

  def setup(self):
    cfg = self.config
    self.network = networks.MLPConvDense(cfg, self.conv_layer)
    self.basis = schedule.temporal_basis(cfg.trajectory_length, cfg.n_temporal_basis)
    if cfg.learn_beta:
      self.beta_perturb_coefficients = self.param(
          "beta_perturb_coefficients", nn.initializers.zeros,
          (cfg.n_temporal_basis,), jnp.float32)

  def __call__(self, x_t, t, deterministic: bool = True):
    """Returns (mu, sigma) of p(x_{t-1} | x_t); also what `init` traces."""
    return self.reverse(x_t, t, deterministic)

  def beta_arr(self, dtype=None):
    """The forward variances beta_t, shape (T,)."""
    cfg = self.config
    coeffs = self.beta_perturb_coefficients if cfg.learn_beta else None
    if coeffs is not None and dtype is not None:
      coeffs = coeffs.astype(dtype)
    return schedule.beta_schedule(cfg.trajectory_length, cfg.step1_beta, self.basis,
                                  coeffs, link=cfg.beta_link, dtype=dtype)

  def process(self, dtype=None) -> GaussianDiffusion:
    return GaussianDiffusion(self.beta_arr(dtype), self.config.beta_link)

  def network_output(self, x, deterministic: bool = True):
    """Z: per-pixel basis coefficients, (B, H, W, n_colors * 2 * J)."""
    return self.network(x, deterministic)

  def reverse(self, x_t, t, deterministic: bool = True):
    """Mean and standard deviation of the reverse step at t."""
    cfg = self.config
    # The readout at t, folded into the network's last layer (schedule.folded_readout).
    weights = schedule.readout_weights(t, jnp.asarray(self.basis, x_t.dtype))
    fold = functools.partial(schedule.folded_readout, weights=weights, n_colors=cfg.n_colors)
    coeffs = self.network(x_t, deterministic, fold)
    mu_coeff, beta_coeff = coeffs[..., 0], coeffs[..., 1]
    beta_t = schedule.at_t(self.beta_arr(x_t.dtype), t)
    return reverse_kernel(x_t, mu_coeff, beta_coeff, beta_t,
                          cfg.trajectory_length, cfg.beta_link)


def make_model(model_config: ml_collections.ConfigDict, conv: str = "xla") -> DiffusionModel:
  """Validates the model section of a config and builds the image model.

  conv: the convolution kernel, 'xla' or 'cpu' (dpm_jax.kernels).
  """
  return DiffusionModel(config_lib.frozen(model_config), kernels.conv_layer(conv))


def init_params(model: nn.Module, rng: jax.Array) -> PyTree:
  """Initialises the parameters for the model's data shape, batch of 1.

  Jitted: one compiled program instead of one per initialiser op.
  """
  x = jnp.zeros((1,) + tuple(model.data_shape), jnp.float32)
  return jax.jit(model.init)(rng, x, jnp.ones((), jnp.float32))


def get_norms(params: PyTree, grads: Optional[PyTree] = None) -> dict:
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


def count_params(params: PyTree) -> int:
  """Total number of scalar parameters."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
