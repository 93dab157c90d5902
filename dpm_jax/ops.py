"""Array operations of the network, with a formulation chosen per backend.

A 3x3 'same' convolution can be written as XLA's convolution or as shifted
slices feeding one matmul. Both compute the same function; which one is
faster depends on the backend: XLA's CPU convolution has a slow backward
pass, while GPUs and TPUs run their native convolutions best.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def resolve_conv_impl(impl: str) -> str:
  """Maps 'auto' to 'matmul' on CPU and 'xla' on GPU and TPU."""
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "xla"
  if impl not in ("xla", "matmul"):
    raise ValueError(f"conv impl must be 'auto', 'xla' or 'matmul', got {impl!r}")
  return impl


def conv2d_same(x, kernel, impl: str = "auto"):
  """Cross-correlation of NHWC images with an HWIO kernel, zero-padded to 'same'.

  Equal to the reference code's 'full' convolution cropped by (f - 1) / 2 on
  each side (up to the kernel flip of a true convolution, which only relabels
  randomly initialised weights).

  Args:
    x: (B, H, W, C_in).
    kernel: (f, f, C_in, C_out), f odd.
    impl: 'xla', 'matmul' or 'auto' (see resolve_conv_impl).

  Returns:
    (B, H, W, C_out).
  """
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding="SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return _conv2d_same_matmul(x, kernel)


def _conv2d_same_matmul(x, kernel):
  """im2col: the f*f shifted copies of x side by side, then one matmul."""
  f = kernel.shape[0]
  p = (f - 1) // 2
  _, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, i:i + h, j:j + w, :] for i in range(f) for j in range(f)], axis=-1)
  return patches @ kernel.reshape(-1, kernel.shape[-1])


def mean_pool(x, factor: int):
  """Averages non-overlapping factor x factor blocks of NHWC images."""
  if factor == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def upsample_nearest(x, factor: int = 2):
  """Nearest-neighbour upsampling of NHWC images by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def leaky_relu(x, negative_slope: float = 0.05):
  """The reference code's LeakyReLU: x for x > 0, 0.05 x otherwise."""
  return jnp.where(x > 0, x, negative_slope * x)
