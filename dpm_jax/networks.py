"""The reverse model's function approximator (regression.py of the 2015 code).

NHWC throughout. The network maps a noisy image x_t to per-pixel
coefficients of the temporal basis for mu and beta:

  lower pathway: a stack of multi-scale convolution layers, in parallel with a
                 dense MLP on the flattened image;
  upper pathway: a per-pixel MLP (a 1x1 convolution stack) on their
                 concatenation, with n_colors * 2 * n_temporal_basis outputs.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dpm_jax import config as config_lib
from dpm_jax import kernels

# (Semi-)orthogonal, as Blocks' Orthogonal initialiser of the reference code.
dense_init = nn.initializers.orthogonal()


def leaky_relu(x, negative_slope: float = 0.05):
  """The reference code's LeakyReLU: x for x > 0, 0.05 x otherwise."""
  return jnp.where(x > 0, x, negative_slope * x)


def mean_pool(x, factor: int):
  """Averages non-overlapping factor x factor blocks of NHWC images."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample_nearest(x, factor: int = 2):
  """Nearest-neighbour upsampling of NHWC images by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def conv_init(num_filters: int, filter_size: int):
  """N(0, std^2), std = sqrt(1 / num_filters) / filter_size^2.

  The reference code's choice: it assumes spatially smooth images, whose
  response grows with the number of filter pixels rather than its square root.
  """
  return nn.initializers.normal(stddev=math.sqrt(1.0 / num_filters) / filter_size**2)


class MultiScaleConvolution(nn.Module):
  """One multi-scale convolution layer.

  For scale s = n_scales-1 .. 0: mean-pool the input by 2^s, 3x3 convolution
  and LeakyReLU(0.05), add to the running sum, and if s > 0 upsample the sum
  by 2 (nearest neighbour). The result is divided by n_scales.
  """
  num_filters: int
  num_scales: int = 1
  filter_size: int = 3
  conv_layer: Callable = kernels.conv_layer_xla

  @nn.compact
  def __call__(self, x):
    num_channels = x.shape[-1]
    init = conv_init(self.num_filters, self.filter_size)
    kshape = (self.filter_size, self.filter_size, num_channels, self.num_filters)
    acc = None
    for scale in range(self.num_scales - 1, -1, -1):
      kernel = self.param(f"kernel_scale{scale}", init, kshape, jnp.float32)
      bias = self.param(f"bias_scale{scale}", nn.initializers.zeros,
                        (self.num_filters,), jnp.float32)
      x_down = mean_pool(x, 2**scale)
      y = self.conv_layer(x_down, kernel.astype(x.dtype), bias.astype(x.dtype))
      acc = y if acc is None else acc + y
      if scale > 0:
        acc = upsample_nearest(acc, 2)
    return acc / self.num_scales


class MultiLayerConvolution(nn.Module):
  """A stack of n_layers multi-scale convolution layers of n_hidden channels."""
  n_layers: int
  n_hidden: int
  n_scales: int = 1
  filter_size: int = 3
  conv_layer: Callable = kernels.conv_layer_xla
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True):
    for i in range(self.n_layers):
      x = _dropout(x, self.dropout_rate, deterministic)
      x = MultiScaleConvolution(self.n_hidden, self.n_scales, self.filter_size,
                                self.conv_layer, name=f"layer{i}")(x)
    return x


class Dense(nn.Module):
  """A dense layer with nn.Dense's parameters (kernel, bias).

  `fold`, if given, replaces the product: fold(x, kernel, bias) -> output
  (schedule.folded_readout).
  """
  features: int

  @nn.compact
  def __call__(self, x, fold=None):
    kernel = self.param("kernel", dense_init, (x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    kernel, bias = kernel.astype(x.dtype), bias.astype(x.dtype)
    if fold is not None:
      return fold(x, kernel, bias)
    return x @ kernel + bias


class MLP(nn.Module):
  """Dense layers with LeakyReLU(0.05) between them, orthogonal init, zero biases.

  Acts on the last axis, so on (B, H, W, C) it is a per-pixel MLP.
  """
  features: Sequence[int]
  activate_final: bool = False
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x, deterministic: bool = True, fold_final=None):
    last = len(self.features) - 1
    for i, width in enumerate(self.features):
      x = _dropout(x, self.dropout_rate, deterministic)
      x = Dense(width, name=f"dense{i}")(x, fold_final if i == last else None)
      if i < last or self.activate_final:
        x = leaky_relu(x)
    return x


class MLPConvDense(nn.Module):
  """The full network: lower conv and dense pathways, upper per-pixel MLP.

  Attributes:
    config: a validated, frozen model config (dpm_jax.config).
    conv_layer: the convolution layer's kernel (dpm_jax.kernels.conv_layer).
  """
  config: config_lib.ml_collections.FrozenConfigDict
  conv_layer: Callable = kernels.conv_layer_xla

  @nn.compact
  def __call__(self, x, deterministic: bool = True, fold_final=None):
    """Maps (B, W, W, n_colors) to (B, W, W, n_colors * 2 * n_temporal_basis).

    With fold_final, the last layer computes fold_final(h, kernel, bias) instead.
    """
    cfg = self.config
    b, h, w, _ = x.shape
    y = MultiLayerConvolution(
        cfg.n_layers_conv, cfg.n_hidden_conv, cfg.n_scales, cfg.filter_size,
        self.conv_layer, cfg.dropout_rate, name="mlp_conv")(x, deterministic)
    n_layers = config_lib.n_dense_lower_layers(cfg)
    if cfg.n_hidden_dense_lower > 0 and n_layers > 0:
      n_out = cfg.n_hidden_dense_lower_output
      dense = MLP([cfg.n_hidden_dense_lower] * (n_layers - 1) + [n_out * h * w],
                  activate_final=cfg.reference_dense_lower,
                  dropout_rate=cfg.dropout_rate,
                  name="mlp_dense_lower")(x.reshape(b, -1), deterministic)
      y = jnp.concatenate(
          [y / math.sqrt(cfg.n_hidden_conv),
           dense.reshape(b, h, w, n_out) / math.sqrt(n_out)], axis=-1)
    n_output = cfg.n_colors * cfg.n_temporal_basis * 2
    return MLP([cfg.n_hidden_dense_upper] * (cfg.n_layers_dense_upper - 1) + [n_output],
               dropout_rate=cfg.dropout_rate,
               name="mlp_dense_upper")(y, deterministic, fold_final)


def _dropout(x, rate: float, deterministic: bool):
  if rate == 0.0:
    return x
  return nn.Dropout(rate)(x, deterministic=deterministic)
