"""The binary heartbeat of the paper's Table 1 (Appendix D.1.2): binomial diffusion.

Data: binary sequences of length 20 with a 1 in every 5th bin, the first
pulse uniform over the first five bins (five sequences, each with
probability 1/5: the true log likelihood is log2(1/5) = -2.32 bits per
sequence), the rest 0. Mean activity p = 0.2.

Model: T = 2000 steps of binomial diffusion (dpm_jax.binomial) with
beta_t = 1 / (T - t + 1), towards independent Bernoulli(0.2). The reverse
kernel's rates come from an MLP with sigmoid units, 20 inputs and three
hidden layers of 50, shared over t, and a readout layer learned separately
for each t, through a sigmoid. By default the readout is added to the logit
of the forward kernel's rate (model.reverse_offset='forward'), as the
Gaussian image model's mean and variance are perturbations of the forward
kernel: a zero readout is then the forward process itself.
"""

from __future__ import annotations

import os
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import binomial
from dpm_jax import config as config_lib
from dpm_jax import errors
from dpm_jax import plotting
from dpm_jax import sampling
from dpm_jax import schedule
from dpm_jax import table1
from dpm_jax.kernels import readout

# Three times LeCun's scale: sigmoid units start outside their near-linear
# range, and training leaves its initial plateau at once instead of after
# thousands of steps.
SIGMOID_INIT = nn.initializers.variance_scaling(9.0, "fan_in", "truncated_normal")


MODEL = config_lib.Section(
    sequence_length=(20, config_lib.integer(1), "bins per sequence"),
    period=(5, config_lib.integer(1), "a 1 every `period` bins"),
    n_hidden=(50, config_lib.integer(1), "sigmoid units per hidden layer, shared over t"),
    n_layers=(3, config_lib.integer(1), "hidden layers"),
    p=(0.2, config_lib.real(0, 1, lo_open=True, hi_open=True),
       "the stationary distribution's rate: the data's mean"),
    reverse_offset=("forward", config_lib.choice("forward", "none"),
                    "'forward': the readout added to the logit of the forward kernel's "
                    "rate; 'none': the rate read out directly"),
    **config_lib.LOSS.with_defaults(trajectory_length=2000, t_sampling="per_example"),
)


def model_config() -> ml_collections.ConfigDict:
  return MODEL.config()


def sample_data(n: int, seed: int, cfg=None) -> np.ndarray:
  """n heartbeat sequences, float32 (n, sequence_length), the phase uniform."""
  cfg = cfg or model_config()
  phase = np.random.default_rng(seed).integers(0, cfg.period, size=(n, 1))
  return (np.arange(cfg.sequence_length)[None, :] % cfg.period == phase).astype(np.float32)


def true_log_likelihood_bits(cfg=None) -> float:
  """log2 of each sequence's probability, 1 / period."""
  return float(-np.log2((cfg or model_config()).period))


class PerStepDense(nn.Module):
  """A dense layer with its own kernel and bias at every time step (integer t).

  Small at initialisation (kernel N(0, init_scale^2), bias 0): with the
  forward offset the model starts close to the forward process, K ~ L_null,
  and the shared layers below still get gradients from the first step.
  """
  features: int
  trajectory_length: int
  init_scale: float = 0.01

  @nn.compact
  def __call__(self, h, t):
    kernel = self.param("kernel", nn.initializers.normal(self.init_scale),
                        (self.trajectory_length, h.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros,
                      (self.trajectory_length, self.features), jnp.float32)
    t = jnp.broadcast_to(jnp.asarray(t).astype(jnp.int32), h.shape[:1])
    return readout.per_step_readout(h, t, kernel.astype(h.dtype), bias.astype(h.dtype))


class HeartbeatModel(nn.Module):
  """The reverse process of binomial heartbeat diffusion: Bernoulli rates of x_{t-1}."""
  config: ml_collections.FrozenConfigDict
  Process: ClassVar[type] = binomial.BinomialDiffusion

  @property
  def data_shape(self) -> tuple:
    return (self.config.sequence_length,)

  @property
  def unit_dims(self) -> int:
    return self.config.sequence_length  # bits per sequence

  def process(self, dtype=jnp.float32) -> binomial.BinomialDiffusion:
    cfg = self.config
    beta = binomial.erase_fraction_schedule(cfg.trajectory_length)
    return binomial.BinomialDiffusion(jnp.asarray(beta, dtype), jnp.asarray(cfg.p, dtype))

  @nn.compact
  def reverse(self, x_t, t, deterministic: bool = True):
    del deterministic
    cfg = self.config
    h = x_t
    for i in range(cfg.n_layers):
      h = jax.nn.sigmoid(nn.Dense(cfg.n_hidden, kernel_init=SIGMOID_INIT, name=f"dense{i}")(h))
    z = PerStepDense(cfg.sequence_length, cfg.trajectory_length, name="readout")(h, t)
    if cfg.reverse_offset == "forward":
      rate = self.process(x_t.dtype).forward_rate(x_t, t)
      z = z + schedule.logit(jnp.clip(rate, binomial.EPS, 1.0 - binomial.EPS))
    return jax.nn.sigmoid(z)

  def __call__(self, x_t, t, deterministic: bool = True):
    return self.reverse(x_t, t, deterministic)


def make_model(cfg) -> HeartbeatModel:
  MODEL.check("model", cfg)
  if cfg.period > cfg.sequence_length:
    raise errors.UserError(
        f"model.period={cfg.period} exceeds model.sequence_length={cfg.sequence_length}: a "
        "sequence would hold no pulse.")
  return HeartbeatModel(ml_collections.FrozenConfigDict(cfg))


def figures(task, params, examples: np.ndarray, workdir: str, key) -> list:
  """Samples beside data (samples.png)."""
  samples = sampling.make_sampler(task.model, num_images=20)(params, key)
  return [plotting.save_binary_panels([examples[:20], np.asarray(samples)], ["data", "samples"],
                                      os.path.join(workdir, "samples.png"))]


HEARTBEAT = table1.GeneratedExperiment(
    "heartbeat", "the binary heartbeat of Table 1 (binomial diffusion)", "sequence",
    {"K_bits": -2.414, "K_minus_L_null_bits": 12.024},  # arXiv 1503.03585 v8, Table 1
    model=MODEL, make_model=make_model, sample_data=sample_data,
    write_picture=plotting.save_binary_rows,  # sequences as rows of black (1) and white bins
    figures=figures,
    # The data's entropy is also the bound's ceiling: K <= E log p(x) = -H(X).
    reference=lambda cfg: {"true_log_likelihood_bits": true_log_likelihood_bits(cfg),
                           "ceiling_bits": true_log_likelihood_bits(cfg)})
