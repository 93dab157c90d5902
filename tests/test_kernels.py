"""The convolution kernels against lax.conv_general_dilated, and the pooling ops.

The CPU kernel, on every path of its backward pass (whole-batch or chunked,
dx in place with as many input as output channels or stacked otherwise, the
few-input-channel path), must give XLA's 'SAME' convolution layer and its
gradients.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from dpm_jax import errors, execution, kernels, networks
from dpm_jax.kernels import cpu_conv
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
    monkeypatch.setattr(cpu_conv, "BACKWARD_CHUNK_ELEMENTS", 1)
  return request.param


def assert_all_close(got, want, rtol, atol_scale):
  for g, w, name in zip(got, want, ("y", "dx", "dkernel", "dbias")):
    if w is None:
      continue
    w = np.asarray(w)
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol,
                               atol=atol_scale * max(1.0, np.abs(w).max()), err_msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cpu_layer_matches_xla_float32(shape, chunking):
  x, kernel, bias, ct = inputs(shape, jnp.float32)
  got = value_and_grads(lambda x, k, b: cpu_conv.conv_layer(x, k, b, 0.05), x, kernel, bias, ct)
  want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.05), x, kernel, bias, ct)
  assert got[0].dtype == jnp.float32 and got[0].shape == want[0].shape
  assert_all_close(got, want, rtol=1e-5, atol_scale=2e-5)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[3], SHAPES[4], SHAPES[5],
                                   (4, 6, 6, 5, 5, 3), (3, 5, 7, 2, 6, 3), (2, 6, 5, 6, 3, 5)],
                         ids=str)
def test_cpu_layer_matches_xla_float64(shape, chunking):
  """Every path, to float64 rounding; slope 1 makes the layer a plain convolution."""
  with jax.enable_x64(True):
    x, kernel, bias, ct = inputs(shape, jnp.float64)
    for slope in (0.2, 1.0):
      got = value_and_grads(lambda x, k, b: cpu_conv.conv_layer(x, k, b, slope),
                            x, kernel, bias, ct)
      want = value_and_grads(lambda x, k, b: reference(x, k, b, slope), x, kernel, bias, ct)
      assert got[0].dtype == jnp.float64
      assert_all_close(got, want, rtol=1e-12, atol_scale=1e-12)


@pytest.mark.parametrize("batch", [pytest.param(1, marks=pytest.mark.slow), 7,
                                   pytest.param(12, marks=pytest.mark.slow)])
def test_default_settings_and_odd_batches(batch):
  """The shipped settings, with batches that do not split evenly (1, a prime)."""
  shape = (batch, 10, 10, 20, 20, 3)
  x, kernel, bias, ct = inputs(shape, jnp.float32, seed=batch)
  want = value_and_grads(lambda x, k, b: reference(x, k, b, 0.05), x, kernel, bias, ct)
  for name in kernels.CONV_KERNELS:
    layer = kernels.conv_layer(name)
    got = jax.jit(lambda x, k, b: value_and_grads(layer, x, k, b, ct))(x, kernel, bias)
    assert_all_close(got, want, rtol=1e-5, atol_scale=2e-5)
  for chunk in (1, 2, 3, 4, 6, 12):
    assert cpu_conv.chunk_size(12, 1, chunk) == chunk
  assert cpu_conv.chunk_size(12, 1, 5) == 4 and cpu_conv.chunk_size(7, 2, 12) == 1


def test_forward_pass_is_one_xla_convolution():
  """The forward pass is XLA's convolution on the whole batch, no chunk loop,
  so that a batch sharded over devices is split by XLA (dpm_jax.parallel)."""
  for c_in in (1, 20):
    x, kernel, bias, _ = inputs((8, 6, 6, c_in, 4, 3), jnp.float32)
    text = str(jax.make_jaxpr(lambda x: cpu_conv.conv_layer(x, kernel, bias))(x))
    assert text.count("conv_general_dilated") == 1 and "while" not in text


def test_check_grads_cpu_layer_float64(monkeypatch):
  monkeypatch.setattr(cpu_conv, "BACKWARD_CHUNK_ELEMENTS", 1)
  with jax.enable_x64(True):
    x, kernel, bias, _ = inputs((2, 5, 4, 3, 3, 3), jnp.float64, seed=3)
    layer = jax.jit(lambda x, k, b: jnp.sum(jnp.sin(cpu_conv.conv_layer(x, k, b))))
    check_grads(layer, (x, kernel, bias), order=1, modes=("rev",), atol=1e-6, rtol=1e-6)
    # Second order away from the LeakyReLU's kink (where the first derivative
    # jumps and finite differences of it mean nothing): every pre-activation
    # positive, then every one negative.
    for shift in (6.0, -6.0):
      check_grads(layer, (x, kernel, bias + shift), order=2, modes=("rev",),
                  atol=1e-6, rtol=1e-6)


def test_resolve():
  assert execution.conv_kernel("auto") == ("cpu" if jax.default_backend() == "cpu" else "xla")
  assert execution.conv_kernel("xla") == "xla" and execution.conv_kernel("cpu") == "cpu"
  assert kernels.conv_layer("xla") is kernels.conv_layer_xla
  assert kernels.conv_layer("cpu") is cpu_conv.conv_layer
  with pytest.raises(errors.UserError, match="compute.conv must be one of"):
    execution.conv_kernel("fft")
  with pytest.raises(ValueError, match="conv kernel must be 'xla' or 'cpu'"):
    kernels.conv_layer("auto")


def test_xla_layer_is_plain_lax_conv():
  x, kernel, bias, _ = inputs((2, 5, 5, 3, 4, 3), jnp.float32)
  np.testing.assert_array_equal(kernels.conv_layer_xla(x, kernel, 0.0 * bias, 1.0),
                                reference(x, kernel))
  np.testing.assert_allclose(kernels.conv_layer_xla(x, kernel, bias),
                             reference(x, kernel, bias, 0.05), rtol=1e-6, atol=1e-6)


def test_leaky_relu():
  x = jnp.asarray([-2.0, -0.5, 0.0, 0.5, 3.0])
  np.testing.assert_allclose(networks.leaky_relu(x), [-0.1, -0.025, 0.0, 0.5, 3.0], rtol=1e-6)
  np.testing.assert_allclose(networks.leaky_relu(x, 0.5), [-1.0, -0.25, 0.0, 0.5, 3.0], rtol=1e-6)


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_mean_pool(factor):
  x = np.random.default_rng(0).normal(size=(3, 8, 8, 2)).astype(np.float32)
  y = np.asarray(networks.mean_pool(jnp.asarray(x), factor))
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
  y = np.asarray(networks.upsample_nearest(jnp.asarray(x), factor))
  assert y.shape == (2, 3 * factor, 4 * factor, 2)
  for i in range(3 * factor):
    for j in range(4 * factor):
      np.testing.assert_array_equal(y[:, i, j], x[:, i // factor, j // factor])
  # Pooling undoes upsampling.
  np.testing.assert_allclose(np.asarray(networks.mean_pool(jnp.asarray(y), factor)), x, rtol=1e-6)
