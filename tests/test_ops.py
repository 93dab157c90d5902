"""The convolution formulations against lax.conv_general_dilated, and the pooling ops.

Every CPU formulation (the backward kernels 'im2col', 'taps', whole-batch or
chunked, dx in place or not, the few-input-channel paths) must give XLA's
'SAME' convolution and its gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from dpm_jax import ops

# The backward pass's per-chunk kernels.
BACKWARD_KERNELS = ["im2col", "taps"]
# (batch, height, width, c_in, c_out, filter size)
SHAPES = [
    (1, 5, 5, 1, 1, 1),
    (4, 6, 7, 3, 5, 1),
    (2, 7, 5, 1, 4, 3),
    (6, 6, 6, 4, 4, 3),
    (3, 8, 6, 5, 2, 3),
    (4, 5, 6, 2, 3, 5),
]


def reference(x, kernel, bias=None, slope=None):
  y = lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC"),
                               precision=lax.Precision.HIGHEST)
  if bias is not None:
    y = y + bias
  if slope is not None:
    y = jnp.where(y > 0, y, slope * y)
  return y


def inputs(shape, dtype, seed=0):
  b, h, w, c_in, c_out, f = shape
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(b, h, w, c_in))
  kernel = rng.normal(size=(f, f, c_in, c_out)) / np.sqrt(f * f * c_in)
  bias = rng.normal(size=(c_out,)) * 0.3
  cotangent = rng.normal(size=(b, h, w, c_out))
  return [jnp.asarray(a, dtype) for a in (x, kernel, bias, cotangent)]


def value_and_grads(fn, x, kernel, bias, cotangent):
  """fn's output and the gradients of <fn, cotangent> w.r.t. all three inputs."""
  def run(x, kernel, bias, cotangent):
    y, vjp = jax.vjp(fn, x, kernel, bias)
    return (y,) + vjp(cotangent)
  return jax.jit(run)(x, kernel, bias, cotangent)


@pytest.fixture(params=["whole", "chunked"])
def chunking(request, monkeypatch):
  """'chunked' makes every batch run one image per chunk, in a loop."""
  if request.param == "chunked":
    monkeypatch.setattr(ops, "_BACKWARD_CHUNK_ELEMENTS", 1)
  return request.param


def set_kernels(monkeypatch, backward, in_place=True):
  monkeypatch.setattr(ops, "_BACKWARD_KERNEL", backward)
  monkeypatch.setattr(ops, "_BACKWARD_IN_PLACE", in_place)


def assert_all_close(got, want, rtol, atol_scale):
  for g, w, name in zip(got, want, ("y", "dx", "dkernel", "dbias")):
    if w is None:
      continue
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol,
                               atol=atol_scale * max(1.0, np.abs(w).max()), err_msg=name)


@pytest.mark.parametrize("backward", BACKWARD_KERNELS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_layer_matches_xla_float32(shape, backward, chunking, monkeypatch):
  set_kernels(monkeypatch, backward)
  x, kernel, bias, ct = inputs(shape, jnp.float32)
  got = value_and_grads(
      lambda x, k, b: ops.conv2d_same_bias_leaky_relu(x, k, b, "matmul", 0.05),
      x, kernel, bias, ct)
  want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.05), x, kernel, bias, ct)
  assert got[0].dtype == jnp.float32 and got[0].shape == want[0].shape
  assert_all_close(got, want, rtol=1e-5, atol_scale=2e-5)


@pytest.mark.parametrize("backward", BACKWARD_KERNELS)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[4], SHAPES[5]], ids=str)
def test_conv2d_same_matches_xla_float64(shape, backward, chunking, monkeypatch):
  set_kernels(monkeypatch, backward)
  with jax.enable_x64(True):
    x, kernel, bias, ct = inputs(shape, jnp.float64)
    conv = lambda x, k, b: ops.conv2d_same(x, k, "matmul") + 0.0 * b
    got = value_and_grads(conv, x, kernel, bias, ct)
    want = value_and_grads(lambda x, k, b: reference(x, k) + 0.0 * b, x, kernel, bias, ct)
    assert got[0].dtype == jnp.float64
    assert_all_close(got, want, rtol=1e-12, atol_scale=1e-12)
    fused = value_and_grads(
        lambda x, k, b: ops.conv2d_same_bias_leaky_relu(x, k, b, "matmul", 0.2),
        x, kernel, bias, ct)
    want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.2), x, kernel, bias, ct)
    assert_all_close(fused, want, rtol=1e-12, atol_scale=1e-12)


@pytest.mark.parametrize("in_place", [False, True])
def test_loop_variants_float64(in_place, monkeypatch):
  """The backward pass's scan-stacked dx and its in-place fori_loop buffer agree."""
  set_kernels(monkeypatch, "im2col", in_place=in_place)
  monkeypatch.setattr(ops, "_BACKWARD_CHUNK_ELEMENTS", 1)
  with jax.enable_x64(True):
    for shape in [(4, 6, 6, 5, 5, 3), (3, 5, 7, 2, 6, 3), (2, 6, 5, 6, 3, 5)]:
      x, kernel, bias, ct = inputs(shape, jnp.float64, seed=1)
      got = value_and_grads(
          lambda x, k, b: ops.conv2d_same_bias_leaky_relu(x, k, b, "matmul"),
          x, kernel, bias, ct)
      want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.05), x, kernel, bias, ct)
      assert_all_close(got, want, rtol=1e-12, atol_scale=1e-12)


@pytest.mark.parametrize("batch", [1, 7, 12])
def test_default_settings_and_odd_batches(batch):
  """The shipped settings, with batches that do not split evenly (1, a prime)."""
  shape = (batch, 10, 10, 20, 20, 3)
  x, kernel, bias, ct = inputs(shape, jnp.float32, seed=batch)
  for impl in ("auto", "matmul", "xla"):
    got = jax.jit(lambda x, k, b: value_and_grads(
        lambda x, k, b: ops.conv2d_same_bias_leaky_relu(x, k, b, impl), x, k, b, ct))(
            x, kernel, bias)
    want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.05), x, kernel, bias, ct)
    assert_all_close(got, want, rtol=1e-5, atol_scale=2e-5)
  for chunk in (1, 2, 3, 4, 6, 12):
    c = ops._chunk_size(12, 1, chunk)
    assert 12 % c == 0 and c <= chunk


def test_forward_pass_is_one_xla_convolution():
  """The forward pass is XLA's convolution on the whole batch, no chunk loop,
  so that a batch sharded over devices is split by XLA (dpm_jax.parallel)."""
  for c_in in (1, 20):
    x, kernel, bias, _ = inputs((8, 6, 6, c_in, 4, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: ops.conv2d_same_bias_leaky_relu(x, kernel, bias, "matmul"))(x)
    text = str(jaxpr)
    assert text.count("conv_general_dilated") == 1 and "while" not in text


@pytest.mark.parametrize("backward", BACKWARD_KERNELS)
def test_check_grads_custom_vjp_float64(backward, monkeypatch):
  set_kernels(monkeypatch, backward)
  monkeypatch.setattr(ops, "_BACKWARD_CHUNK_ELEMENTS", 1)
  with jax.enable_x64(True):
    x, kernel, bias, _ = inputs((2, 5, 4, 3, 3, 3), jnp.float64, seed=3)
    fused = jax.jit(lambda x, k, b: jnp.sum(jnp.sin(
        ops.conv2d_same_bias_leaky_relu(x, k, b, "matmul"))))
    check_grads(fused, (x, kernel, bias), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    # Second order away from the LeakyReLU's kink (where the first derivative
    # jumps and finite differences of it mean nothing): every pre-activation
    # positive, then every one negative.
    for shift in (6.0, -6.0):
      check_grads(fused, (x, kernel, bias + shift), order=2, modes=("rev",),
                  atol=1e-6, rtol=1e-6)
    conv = jax.jit(lambda x, k: ops.conv2d_same(x, k, "matmul"))
    check_grads(conv, (x, kernel), order=2, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_resolve_conv_impl():
  assert ops.resolve_conv_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")
  assert ops.resolve_conv_impl("xla") == "xla"
  assert ops.resolve_conv_impl("matmul") == "matmul"
  with pytest.raises(ValueError, match="conv impl"):
    ops.resolve_conv_impl("fft")


def test_xla_impl_is_plain_lax_conv():
  x, kernel, bias, _ = inputs((2, 5, 5, 3, 4, 3), jnp.float32)
  np.testing.assert_array_equal(ops.conv2d_same(x, kernel, "xla"), reference(x, kernel))
  np.testing.assert_allclose(ops.conv2d_same_bias_leaky_relu(x, kernel, bias, "xla"),
                             reference(x, kernel, bias, 0.05), rtol=1e-6, atol=1e-6)


def test_leaky_relu():
  x = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 3.0])
  np.testing.assert_allclose(ops.leaky_relu(x), [-0.1, -0.025, 0.0, 0.5, 3.0], rtol=1e-6)
  np.testing.assert_allclose(ops.leaky_relu(x, 0.5), [-1.0, -0.25, 0.0, 0.5, 3.0], rtol=1e-6)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_mean_pool(factor):
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
  y = np.asarray(ops.mean_pool(jnp.asarray(x), factor))
  assert y.shape == (3, 8 // factor, 8 // factor, 2)
  expected = np.zeros_like(y)
  for i in range(8 // factor):
    for j in range(8 // factor):
      block = x[:, i * factor:(i + 1) * factor, j * factor:(j + 1) * factor, :]
      expected[:, i, j, :] = block.mean(axis=(1, 2))
  np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_upsample_nearest(factor):
  x = np.random.default_rng(1).normal(size=(2, 3, 4, 2)).astype(np.float32)
  y = np.asarray(ops.upsample_nearest(jnp.asarray(x), factor))
  assert y.shape == (2, 3 * factor, 4 * factor, 2)
  for i in range(3 * factor):
    for j in range(4 * factor):
      np.testing.assert_array_equal(y[:, i, j], x[:, i // factor, j // factor])
  # Pooling undoes upsampling.
  np.testing.assert_allclose(np.asarray(ops.mean_pool(jnp.asarray(y), factor)), x, rtol=1e-6)
