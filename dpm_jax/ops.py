"""Array operations of the network, with a formulation chosen per backend.

A 'same' convolution, and the convolution layer (convolution, bias and
LeakyReLU), can be computed two ways that give the same function:

  'xla'     lax.conv_general_dilated, differentiated by JAX. GPUs and TPUs run
            it best.
  'matmul'  the CPU formulation. XLA's CPU convolution runs its forward pass
            well but its gradients slowly (the weight gradient by far), and
            large temporaries are costly: an executable's temporaries are one
            fresh allocation per call, page-faulted in again every time. So
            the layer is a jax.custom_vjp:
              forward:  XLA's convolution on the whole batch, bias and
                        LeakyReLU (a plain op, so sharding the batch over
                        devices splits it, see dpm_jax.parallel);
              backward: over chunks of a few images in a loop, every
                        intermediate of a chunk staying in cache: the
                        LeakyReLU's derivative from the saved output (y > 0
                        iff the pre-activation > 0), the f*f shifted copies of
                        the output gradient g, and two matmuls with them: the
                        input gradient (a 'same' convolution of g with the
                        flipped kernel, channels swapped) and the weight
                        gradient (x^T times the copies), accumulated over
                        chunks; the input gradient overwrites g's buffer chunk
                        by chunk.
            Only the layer's input and output are kept for the backward pass.
            The chunk loop slices the batch, so with several devices the
            backward pass must see its device's part only: training runs the
            gradient per device under shard_map (dpm_jax.diffusion).

'auto' picks 'matmul' on CPU and 'xla' elsewhere. Both are float32 in
float32 out (float64 with x64 enabled); no precision is traded.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

# The backward pass's chunks: the images per chunk divide the batch and are
# as many as keep a chunk's f*f shifted copies of the output gradient within
# these many elements.
_BACKWARD_CHUNK_ELEMENTS = 1_200_000
# The backward pass's per-chunk kernel ('im2col' or 'taps', see
# _backward_chunk) and loop; module-level so that tests can run each.
_BACKWARD_KERNEL = "im2col"
_BACKWARD_IN_PLACE = True


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
    return _conv_xla(x, kernel)
  return _conv_layer_cpu(x, kernel, None, None)


def conv2d_same_bias_leaky_relu(x, kernel, bias, impl: str = "auto",
                                negative_slope: float = 0.05):
  """leaky_relu(conv2d_same(x, kernel) + bias): one convolution layer.

  Args:
    x: (B, H, W, C_in).
    kernel: (f, f, C_in, C_out), f odd.
    bias: (C_out,).
    impl: 'xla', 'matmul' or 'auto' (see resolve_conv_impl).
    negative_slope: the LeakyReLU's slope for negative inputs.

  Returns:
    (B, H, W, C_out).
  """
  impl = resolve_conv_impl(impl)
  if impl == "xla":
    return leaky_relu(_conv_xla(x, kernel) + bias, negative_slope)
  return _conv_layer_cpu(x, kernel, bias, float(negative_slope))


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


# ----------------------------------------------------------------------------
# XLA's convolution.

def _conv_xla(x, kernel):
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


# ----------------------------------------------------------------------------
# The CPU formulation.

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


def _sum_tap_slices(z, f: int, c: int, sign: int):
  """sum_j z[b, h, w + sign * (j - p), j, :] with z's last axis read as (f, c)."""
  if f == 1:
    return z
  p = (f - 1) // 2
  _, h, w, _ = z.shape
  zp = jnp.pad(z, ((0, 0), (0, 0), (p, p), (0, 0)))
  out = None
  for j in range(f):
    start = p + sign * (j - p)
    term = zp[:, :, start:start + w, j * c:(j + 1) * c]
    out = term if out is None else out + term
  return out


def _backward_chunk(x, g, kernel, how: str):
  """(dx, dk) of conv2d_same on one chunk, from the output gradient g.

  dx[q] = sum_ij g[q - (i-p, j-p)] kernel[i, j]^T (a 'same' convolution of g
  with the flipped kernel, channels swapped); dk[i, j] = sum_q
  x[q + (i-p, j-p)]^T g[q]. Both are matmuls with shifted copies.

  'im2col': the f*f shifts of g serve both products (with fewer input than
  output channels, dk takes the f*f shifts of x and dx the 'taps' form).
  'taps': the f vertical shifts of g serve both products; dk pairs them with
  the f horizontal shifts of x (shifting g down by i - p is shifting x up
  by it, the zero padding included), dx sums f horizontally shifted slices.
  """
  f, _, c_in, c_out = kernel.shape
  p = (f - 1) // 2
  if how not in ("im2col", "taps"):
    raise ValueError(f"unknown conv backward kernel {how!r}")
  if how == "im2col" and c_in >= c_out:
    # Block (i, j) holds g[q - (i - p, j - p)].
    g_all = _shifts(g, [(p - i, p - j) for i in range(f) for j in range(f)], (1, 2))
    dk = lax.dot_general(x, g_all, (((0, 1, 2), (0, 1, 2)), ((), ())))
    dk = dk.reshape(c_in, f, f, c_out).transpose(1, 2, 0, 3)
    dx = g_all @ kernel.transpose(0, 1, 3, 2).reshape(f * f * c_out, c_in)
    return dx, dk
  g_rows = _shifts(g, [(p - i, 0) for i in range(f)], (1,))  # [i, c_out]
  if how == "taps":
    x_cols = _shifts(x, [(0, j - p) for j in range(f)], (2,))  # [j, c_in]
    dk = lax.dot_general(x_cols, g_rows, (((0, 1, 2), (0, 1, 2)), ((), ())))
    dk = dk.reshape(f, c_in, f, c_out).transpose(2, 0, 1, 3)
  else:  # few input channels: block (i, j) of x_all holds x[q + (i - p, j - p)]
    x_all = _shifts(x, [(i - p, j - p) for i in range(f) for j in range(f)], (1, 2))
    dk = lax.dot_general(x_all, g, (((0, 1, 2), (0, 1, 2)), ((), ())))
    dk = dk.reshape(f, f, c_in, c_out)
  z = g_rows @ kernel.transpose(0, 3, 1, 2).reshape(f * c_out, f * c_in)  # [j, c_in]
  return _sum_tap_slices(z, f, c_in, sign=-1), dk


def _chunk_size(batch: int, elements_per_image: int, max_elements: int) -> int:
  """The largest divisor of batch whose chunk holds at most max_elements."""
  target = max(1, max_elements // max(1, elements_per_image))
  for c in range(min(batch, target), 0, -1):
    if batch % c == 0:
      return c
  return 1


def _layer_forward(x, kernel, bias, slope):
  y = _conv_xla(x, kernel)
  if bias is not None:
    y = y + bias
  if slope is not None:
    y = leaky_relu(y, slope)
  return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_layer_cpu(x, kernel, bias, slope):
  """[leaky_relu](conv2d_same(x, kernel) [+ bias]); bias and slope may be None."""
  return _layer_forward(x, kernel, bias, slope)


def _layer_fwd(x, kernel, bias, slope):
  y = _layer_forward(x, kernel, bias, slope)
  # The LeakyReLU's derivative is read off its output, y > 0 iff pre > 0.
  return y, (x, y if slope is not None else None, kernel, bias)


def _layer_bwd(slope, res, dy):
  x, y, kernel, bias = res
  f, _, c_in, c_out = kernel.shape
  dtype = jnp.result_type(x.dtype, dy.dtype)

  def one(xc, yc, dyc):
    g = dyc if yc is None else dyc * jnp.where(yc > 0, 1.0, slope).astype(dyc.dtype)
    dx, dk = _backward_chunk(xc, g, kernel, _BACKWARD_KERNEL)
    return dx, dk, jnp.sum(g, axis=(0, 1, 2))

  b, h, w, _ = x.shape
  chunk = _chunk_size(b, h * w * f * f * max(c_in, c_out), _BACKWARD_CHUNK_ELEMENTS)
  if chunk >= b:
    dx, dk, db = one(x, y, dy)
  elif c_in == c_out and _BACKWARD_IN_PLACE:
    # dx overwrites dy chunk by chunk (the same shape), so no fresh output
    # buffer is allocated and zero-filled for it.
    n = b // chunk

    def body(i, carry):
      dk, db, buf = carry
      start = i * chunk
      take = lambda a: None if a is None else lax.dynamic_slice_in_dim(a, start, chunk)
      dx_i, dk_i, db_i = one(take(x), take(y), take(buf))
      buf = lax.dynamic_update_slice_in_dim(buf, dx_i.astype(buf.dtype), start, 0)
      return dk + dk_i, db + db_i, buf

    init = (jnp.zeros(kernel.shape, dtype), jnp.zeros((c_out,), dtype), dy)
    dk, db, dx = lax.fori_loop(0, n, body, init)
  else:
    n = b // chunk
    split = lambda a: None if a is None else a.reshape((n, chunk) + a.shape[1:])

    def body(acc, xs):
      dx, dk, db = one(*xs)
      return (acc[0] + dk, acc[1] + db), dx

    init = (jnp.zeros(kernel.shape, dtype), jnp.zeros((c_out,), dtype))
    (dk, db), dx = lax.scan(body, init, (split(x), split(y), split(dy)))
    dx = dx.reshape(x.shape)
  return (dx.astype(x.dtype), dk.astype(kernel.dtype),
          None if bias is None else db.astype(bias.dtype))


_conv_layer_cpu.defvjp(_layer_fwd, _layer_bwd)
