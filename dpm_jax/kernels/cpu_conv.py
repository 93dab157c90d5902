"""The convolution layer's CPU kernel: XLA's forward, a chunked hand-written backward.

XLA's CPU convolution gradients are slow (the weight gradient by far), so the
layer leaky_relu(conv2d_same(x, kernel) + bias) is a jax.custom_vjp:

  forward:  XLA's convolution on the whole batch, bias and LeakyReLU;
  backward: over chunks of a few images in a loop, each chunk's
            intermediates staying in cache: the LeakyReLU's derivative from
            the saved output (y > 0 iff the pre-activation > 0, for a
            positive slope), then the input and weight gradients as matmuls
            with shifted copies (_backward_chunk), accumulated over chunks.

Only the layer's input and output are kept for the backward pass. The chunk
loop slices the batch, so with several devices it must run per device
(dpm_jax.parallel's shard_map). float32 in, float32 out (float64 with x64).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# A backward chunk's f*f shifted copies of the output gradient stay within these many elements.
BACKWARD_CHUNK_ELEMENTS = 1_200_000


def _shifts(x, offsets, axes):
  """Zero-padded shifts of x side by side on the channel axis.

  Block n holds x[..., h + dh, w + dw, :] for (dh, dw) = offsets[n], zero
  where that falls outside the image; axes says which of (1, 2) may shift.
  """
  if len(offsets) == 1 and offsets[0] == (0, 0):
    return x
  _, h, w, _ = x.shape
  ph = max(abs(o[0]) for o in offsets) if 1 in axes else 0
  pw = max(abs(o[1]) for o in offsets) if 2 in axes else 0
  xp = jnp.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  return jnp.concatenate(
      [xp[:, ph + dh:ph + dh + h, pw + dw:pw + dw + w, :] for dh, dw in offsets],
      axis=-1)


def _sum_tap_slices(z, f: int, c: int):
  """sum_j z[b, h, w - (j - p), j, :] with z's last axis read as (f, c)."""
  if f == 1:
    return z
  p = (f - 1) // 2
  _, _, w, _ = z.shape
  zp = jnp.pad(z, ((0, 0), (0, 0), (p, p), (0, 0)))
  out = None
  for j in range(f):
    start = p - (j - p)
    term = zp[:, :, start:start + w, j * c:(j + 1) * c]
    out = term if out is None else out + term
  return out


def _backward_chunk(x, g, kernel):
  """(dx, dk) of conv2d_same on one chunk, from the output gradient g.

  dx[q] = sum_ij g[q - (i-p, j-p)] kernel[i, j]^T (a 'same' convolution of g
  with the flipped kernel, channels swapped); dk[i, j] = sum_q
  x[q + (i-p, j-p)]^T g[q]. Both are matmuls with shifted copies (im2col).
  With fewer input than output channels, dk takes the f*f shifts of x and dx
  sums f horizontally shifted slices of one matmul with g's f vertical shifts.
  """
  f, _, c_in, c_out = kernel.shape
  p = (f - 1) // 2
  if c_in >= c_out:
    # Block (i, j) holds g[q - (i - p, j - p)].
    g_all = _shifts(g, [(p - i, p - j) for i in range(f) for j in range(f)], (1, 2))
    dk = lax.dot_general(x, g_all, (((0, 1, 2), (0, 1, 2)), ((), ())))
    dk = dk.reshape(c_in, f, f, c_out).transpose(1, 2, 0, 3)
    dx = g_all @ kernel.transpose(0, 1, 3, 2).reshape(f * f * c_out, c_in)
    return dx, dk
  g_rows = _shifts(g, [(p - i, 0) for i in range(f)], (1,))  # [i, c_out]
  # Block (i, j) of x_all holds x[q + (i - p, j - p)].
  x_all = _shifts(x, [(i - p, j - p) for i in range(f) for j in range(f)], (1, 2))
  dk = lax.dot_general(x_all, g, (((0, 1, 2), (0, 1, 2)), ((), ())))
  dk = dk.reshape(f, f, c_in, c_out)
  z = g_rows @ kernel.transpose(0, 3, 1, 2).reshape(f * c_out, f * c_in)  # [j, c_in]
  return _sum_tap_slices(z, f, c_in), dk


def chunk_size(batch: int, elements_per_image: int, max_elements: int) -> int:
  """The largest divisor of batch whose chunk holds at most max_elements."""
  target = max(1, max_elements // max(1, elements_per_image))
  return max(c for c in range(1, min(batch, target) + 1) if batch % c == 0)


def _forward(x, kernel, bias, negative_slope):
  y = lax.conv_general_dilated(x, kernel, window_strides=(1, 1), padding="SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
  return jnp.where(y > 0, y, negative_slope * y)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_layer(x, kernel, bias, negative_slope: float = 0.05):
  """leaky_relu(conv2d_same(x, kernel) + bias), negative_slope > 0: kernels.conv_layer_xla."""
  return _forward(x, kernel, bias, negative_slope)


def _conv_layer_fwd(x, kernel, bias, negative_slope):
  y = _forward(x, kernel, bias, negative_slope)
  return y, (x, y, kernel, bias)


def _conv_layer_bwd(negative_slope, res, dy):
  x, y, kernel, bias = res
  f, _, c_in, c_out = kernel.shape
  dtype = jnp.result_type(x.dtype, dy.dtype)

  def one(xc, yc, dyc):
    g = dyc * jnp.where(yc > 0, 1.0, negative_slope).astype(dyc.dtype)
    dx, dk = _backward_chunk(xc, g, kernel)
    return dx, dk, jnp.sum(g, axis=(0, 1, 2))

  b, h, w, _ = x.shape
  chunk = chunk_size(b, h * w * f * f * max(c_in, c_out), BACKWARD_CHUNK_ELEMENTS)
  n = b // chunk
  if n == 1:
    dx, dk, db = one(x, y, dy)
  elif c_in == c_out:
    # dx overwrites dy chunk by chunk (the same shape): no fresh output buffer.
    def body(i, carry):
      dk, db, buf = carry
      take = lambda a: lax.dynamic_slice_in_dim(a, i * chunk, chunk)
      dx_i, dk_i, db_i = one(take(x), take(y), take(buf))
      buf = lax.dynamic_update_slice_in_dim(buf, dx_i.astype(buf.dtype), i * chunk, 0)
      return dk + dk_i, db + db_i, buf

    init = (jnp.zeros(kernel.shape, dtype), jnp.zeros((c_out,), dtype), dy)
    dk, db, dx = lax.fori_loop(0, n, body, init)
  else:
    split = lambda a: a.reshape((n, chunk) + a.shape[1:])

    def body(acc, xs):
      dx, dk, db = one(*xs)
      return (acc[0] + dk, acc[1] + db), dx

    init = (jnp.zeros(kernel.shape, dtype), jnp.zeros((c_out,), dtype))
    (dk, db), dx = lax.scan(body, init, (split(x), split(y), split(dy)))
    dx = dx.reshape(x.shape)
  return dx.astype(x.dtype), dk.astype(kernel.dtype), db.astype(bias.dtype)


conv_layer.defvjp(_conv_layer_fwd, _conv_layer_bwd)
