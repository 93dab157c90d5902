"""The two-dimensional Swiss roll of the paper's Figure 1 and Table 1 (Appendix D.1.1).

Data: theta = 1.5 pi (1 + 2u), u ~ U(0, 1); x = (theta cos theta, theta sin
theta) + noise_std N(0, I) (the usual Swiss roll's angle range; the paper
does not give its own), centred and scaled by one constant to unit variance
per coordinate on average (E|x|^2 = 2), as the paper's Table 1 scales data.

Model: T = 40 steps of Gaussian diffusion (the image model's forward process,
posterior, reverse kernel and bound: dpm_jax.diffusion) from N(0, I). The
reverse mean and diagonal variance come from one normalised radial basis
function network, a hidden layer of 16 units shared over t and over both
outputs, and a readout learned separately for each t; the variance passes
through a sigmoid (diffusion.reverse_kernel, as the image model). The forward
schedule is learned (paper section 2.4.1): beta_1 fixed to
model.step1_beta, beta_2..T parameters through a sigmoid (starting at the
reference code's schedule), trained by gradient ascent on K with frozen
noise (the reparameterised forward sample).

With unit-variance data K is at most -H(X_1), the entropy of the data after
the first forward step: the roll's thickness, noise_std and beta_1, bound
what any model can reach.
"""

from __future__ import annotations

import math
import os
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import diffusion
from dpm_jax import plotting
from dpm_jax import sampling
from dpm_jax import schedule
from dpm_jax import table1
from dpm_jax.heartbeat import PerStepDense

THETA_RANGE = (1.5 * math.pi, 4.5 * math.pi)


MODEL = config_lib.Section(
    noise_std=(0.0, config_lib.real(0), "the data's noise, in the roll's raw units (before "
               "scaling)"),
    n_hidden=(64, config_lib.integer(1), "radial basis functions; the paper's 16 reach about "
              "1.6 bits per point in a CPU's training budget, 64 its 2.35"),
    step1_beta=(1e-6, config_lib.real(0, 1, lo_open=True, hi_open=True),
                "beta_1, fixed: with unit-variance data it bounds K from above"),
    learn_beta=(True, config_lib.BOOLEAN, "learn beta_2..T (paper section 2.4.1); False: the "
                "reference code's 1 / linspace(T, 2, T), fixed"),
    beta_link=("logit", config_lib.choice(*config_lib.BETA_LINKS),
               "the reverse variance's link to beta_t: 'logit' or 'log'"),
    **config_lib.LOSS.with_defaults(trajectory_length=40, t_sampling="per_example"),
)


def model_config() -> ml_collections.ConfigDict:
  return MODEL.config()


def _raw_roll(n: int, rng: np.random.Generator, noise_std: float) -> np.ndarray:
  theta = THETA_RANGE[0] + (THETA_RANGE[1] - THETA_RANGE[0]) * rng.random(n)
  x = np.stack([theta * np.cos(theta), theta * np.sin(theta)], axis=1)
  return x + noise_std * rng.standard_normal((n, 2))


def _moments(noise_std: float):
  """Mean and scale of the raw roll, from one fixed large sample."""
  x = _raw_roll(1_000_000, np.random.default_rng(12345), noise_std)
  mean = x.mean(axis=0)
  return mean, math.sqrt(np.mean(np.sum((x - mean) ** 2, axis=1)) / 2.0)


def sample_data(n: int, seed: int, cfg=None) -> np.ndarray:
  """n points of the scaled Swiss roll, float32 (n, 2)."""
  cfg = cfg or model_config()
  mean, scale = _moments(float(cfg.noise_std))
  x = _raw_roll(n, np.random.default_rng(seed), float(cfg.noise_std))
  return ((x - mean) / scale).astype(np.float32)


def true_log_likelihood_bits(cfg=None, n_points: int = 5000, n_theta: int = 2000,
                             beta: float = 0.0) -> float:
  """E log2 p(x) of the scaled data, per point: a 1-D mixture over the angle, numerically.
  With beta, of x_1 = sqrt(1 - beta) x_0 + sqrt(beta) noise instead (the data after a
  forward step of variance beta).

  NaN without noise and beta (the roll is then a curve: no density).
  """
  cfg = cfg or model_config()
  sd = float(cfg.noise_std)
  if sd == 0 and beta == 0:
    return float("nan")
  mean, scale = _moments(sd)
  shrink = math.sqrt(1.0 - beta)
  var = (shrink * sd / scale) ** 2 + beta

  def roll(n):  # n centres, evenly spaced in the angle, as the data are
    theta = np.linspace(*THETA_RANGE, n)
    return shrink * (np.stack([theta * np.cos(theta), theta * np.sin(theta)], 1) - mean) / scale

  # Centres closer than a third of the mixture's width along the roll, so that it is a
  # smooth density and not a string of beads.
  centres = roll(n_theta)
  length = float(np.sum(np.linalg.norm(np.diff(centres, axis=0), axis=1)))
  if 3 * length / math.sqrt(var) > n_theta:
    centres = roll(int(3 * length / math.sqrt(var)))
  x = sample_data(n_points, 2024, cfg).astype(np.float64)
  x = shrink * x + math.sqrt(beta) * np.random.default_rng(2025).standard_normal(x.shape)
  out = []
  for chunk in np.array_split(x, max(1, n_points * len(centres) // 2_000_000)):
    d2 = np.sum((chunk[:, None, :] - centres[None]) ** 2, axis=-1)
    log_comp = -d2 / (2 * var) - math.log(2 * math.pi * var)
    m = log_comp.max(axis=1, keepdims=True)
    out.append((m[:, 0] + np.log(np.mean(np.exp(log_comp - m), axis=1))) / math.log(2))
  return float(np.mean(np.concatenate(out)))


class NormalizedRBF(nn.Module):
  """h_j = exp(-|x - c_j|^2 / (2 w_j^2)) / sum_k exp(-|x - c_k|^2 / (2 w_k^2))."""
  n_hidden: int

  @nn.compact
  def __call__(self, x):
    centres = self.param("centres", nn.initializers.normal(1.0), (self.n_hidden, x.shape[-1]),
                         jnp.float32).astype(x.dtype)
    log_width = self.param("log_width", nn.initializers.constant(math.log(0.5)),
                           (self.n_hidden,), jnp.float32).astype(x.dtype)
    d2 = jnp.sum((x[:, None, :] - centres[None]) ** 2, axis=-1)
    return jax.nn.softmax(-d2 / (2.0 * jnp.exp(2.0 * log_width)), axis=-1)


class SwissRollModel(nn.Module):
  """The reverse process of the 2-D Swiss roll: Gaussian, per-t mean and diagonal variance."""
  config: ml_collections.FrozenConfigDict
  Process: ClassVar[type] = diffusion.GaussianDiffusion

  @property
  def data_shape(self) -> tuple:
    return (2,)

  @property
  def unit_dims(self) -> int:
    return 2  # bits per point

  def _initial_beta(self) -> np.ndarray:
    cfg = self.config
    beta = schedule.beta_baseline(cfg.trajectory_length)
    beta[0] = cfg.step1_beta
    return beta

  def setup(self):
    cfg = self.config
    self.rbf = NormalizedRBF(cfg.n_hidden)
    self.readout = PerStepDense(4, cfg.trajectory_length)
    if cfg.learn_beta:
      self.beta_logits = self.param(
          "beta_logits", lambda key, shape: jnp.asarray(
              schedule.logit(self._initial_beta()[1:]), jnp.float32),
          (cfg.trajectory_length - 1,))

  def beta_arr(self, dtype=jnp.float32):
    beta = jnp.asarray(self._initial_beta(), dtype)
    if self.config.learn_beta:
      beta = beta.at[1:].set(jax.nn.sigmoid(self.beta_logits.astype(dtype)))
    return beta

  def process(self, dtype=jnp.float32) -> diffusion.GaussianDiffusion:
    return diffusion.GaussianDiffusion(self.beta_arr(dtype), self.config.beta_link)

  def reverse(self, x_t, t, deterministic: bool = True):
    del deterministic
    cfg = self.config
    z = self.readout(self.rbf(x_t), t)
    beta_t = schedule.at_t(self.beta_arr(x_t.dtype), t)
    return diffusion.reverse_kernel(x_t, z[:, :2], z[:, 2:], beta_t, cfg.trajectory_length,
                                    cfg.beta_link)

  def __call__(self, x_t, t, deterministic: bool = True):
    return self.reverse(x_t, t, deterministic)


def make_model(cfg) -> SwissRollModel:
  MODEL.check("model", cfg)
  return SwissRollModel(ml_collections.FrozenConfigDict(cfg))


def figures(task, params, examples: np.ndarray, workdir: str, key) -> list:
  """The paper's Figure 1 (figure1.png): forward and reverse trajectories at t = 0,
  T/2 and T, and the learned drift mu(x_t, t) - x_t; and samples.png."""
  model = task.model
  T = model.config.trajectory_length
  columns = [0, T // 2, T - 1]
  x0 = jnp.asarray(examples[:2000])
  noise = jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
  g = np.linspace(-2.2, 2.2, 15)
  grid = jnp.asarray(np.stack(np.meshgrid(g, g), -1).reshape(-1, 2), jnp.float32)
  learned = [1] + columns[1:]  # step 0's reverse kernel is fixed: the first learned one

  @jax.jit
  def forward_and_drift(params):
    process = model.apply(params, method="process")
    forward = [process.q_sample(x0, jnp.asarray(float(t)), noise) for t in columns]
    drift = [model.apply(params, grid, jnp.full((grid.shape[0],), float(t)),
                         method="reverse")[0] - grid for t in learned]
    return forward, drift

  forward, drift = jax.tree.map(np.asarray, forward_and_drift(params))
  drift = [(np.asarray(grid), d) for d in drift]
  sampler = sampling.make_sampler(model, num_images=2000, record_t=(-1, T // 2, T - 1))
  _, states = sampler(params, key)
  reverse = [np.asarray(s) for s in states]
  return [plotting.save_figure_1(forward, reverse, drift, ["t = 0", "t = T/2", "t = T"],
                                 os.path.join(workdir, "figure1.png")),
          plotting.save_scatter(reverse[0], os.path.join(workdir, "samples.png"), "samples")]


def reference(cfg) -> dict:
  """The data's true log likelihood per point (None, JSON null, for a noiseless roll), and
  the bound's ceiling: K <= -H(X_1), the entropy of the data after the first forward step
  of variance model.step1_beta, since the reverse kernels only ever see X_1's spread."""
  value = true_log_likelihood_bits(cfg)
  return {"true_log_likelihood_bits": value if math.isfinite(value) else None,
          "ceiling_bits": true_log_likelihood_bits(cfg, n_points=1000,
                                                   beta=float(cfg.step1_beta))}


SWISS_ROLL = table1.GeneratedExperiment(
    "swiss_roll", "the Swiss roll of Figure 1 and Table 1 (2-D Gaussian diffusion)", "point",
    {"K_bits": 2.35, "K_minus_L_null_bits": 6.45},  # arXiv 1503.03585 v8, Table 1
    model=MODEL, make_model=make_model, sample_data=sample_data,
    write_picture=lambda samples, path: plotting.save_scatter(samples, path, "samples"),
    figures=figures, reference=reference)
