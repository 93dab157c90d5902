"""How the network's convolution layers run: one kernel per backend, same function.

A convolution layer is leaky_relu(conv2d_same(x, kernel) + bias). Two kernels
compute it:

  'xla'  lax.conv_general_dilated, differentiated by JAX (GPUs and TPUs).
  'cpu'  XLA's convolution forward and a hand-written, chunked backward pass
         (dpm_jax.kernels.cpu_conv): XLA's CPU convolution gradients are slow.

The network takes the layer function at construction (dpm_jax.execution
chooses it); the kernel changes neither the parameters nor the function computed.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp

from dpm_jax.kernels import cpu_conv

CONV_KERNELS = ("xla", "cpu")


def conv_layer_xla(x, kernel, bias, negative_slope: float = 0.05):
  """leaky_relu(conv2d_same(x, kernel) + bias) with XLA's convolution.

  Args:
    x: (B, H, W, C_in) images.
    kernel: (f, f, C_in, C_out), f odd; cross-correlation, zero-padded 'same'.
    bias: (C_out,).
    negative_slope: the LeakyReLU's slope below zero.

  Returns:
    (B, H, W, C_out).
  """
  y = lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  return jnp.where(y > 0, y, negative_slope * y)


def conv_layer(name: str = "xla") -> Callable[..., jax.Array]:
  """The convolution layer function of a kernel name, 'xla' or 'cpu'."""
  if name not in CONV_KERNELS:
    raise ValueError(f"conv kernel must be 'xla' or 'cpu', got {name!r}")
  return conv_layer_xla if name == "xla" else cpu_conv.conv_layer


def runs_cpu_conv(model) -> bool:
  """Whether a model's convolution layers run the CPU kernel."""
  return getattr(model, "conv_layer", None) is cpu_conv.conv_layer
