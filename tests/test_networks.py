"""Network shapes, parameter counts, initialisation and the multi-scale layer."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model_config
import runs
from dpm_jax import config as config_lib
from dpm_jax import diffusion, kernels, networks


def expected_param_count(cfg):
  """Counts parameters from the architecture's description, layer by layer."""
  f2 = cfg.filter_size**2
  conv, c_in = 0, cfg.n_colors
  for _ in range(cfg.n_layers_conv):
    conv += cfg.n_scales * (f2 * c_in * cfg.n_hidden_conv + cfg.n_hidden_conv)
    c_in = cfg.n_hidden_conv
  pixels = cfg.spatial_width**2
  widths = ([cfg.n_colors * pixels] + [cfg.n_hidden_dense_lower] * (cfg.n_layers_dense_lower - 1)
            + [cfg.n_hidden_dense_lower_output * pixels])
  dense = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
  widths = ([cfg.n_hidden_conv + cfg.n_hidden_dense_lower_output]
            + [cfg.n_hidden_dense_upper] * (cfg.n_layers_dense_upper - 1)
            + [cfg.n_colors * 2 * cfg.n_temporal_basis])
  upper = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
  return conv + dense + upper


@pytest.mark.slow
@pytest.mark.parametrize("preset,count", [("mnist", 1_691_008), ("cifar10", None)])
def test_preset_shapes_and_parameter_counts(preset, count):
  cfg = runs.config(preset).model
  model = diffusion.make_model(cfg)
  params = jax.eval_shape(lambda: diffusion.init_params(model, jax.random.key(0)))
  n = diffusion.count_params(params)
  assert n == expected_param_count(cfg)
  if count is not None:
    assert n == count
  w = cfg.spatial_width
  x = jax.ShapeDtypeStruct((5, w, w, cfg.n_colors), jnp.float32)
  z = jax.eval_shape(lambda p, x: model.apply(p, x, method="network_output"),
                     params, x)
  assert z.shape == (5, w, w, cfg.n_colors * 2 * cfg.n_temporal_basis)
  mu, sigma = jax.eval_shape(lambda p, x: model.apply(p, x, jnp.ones(())), params, x)
  assert mu.shape == sigma.shape == (5, w, w, cfg.n_colors)


@pytest.mark.slow
def test_initialisation_follows_the_reference_code():
  cfg = config_lib.get_model_config()
  params = diffusion.init_params(diffusion.make_model(cfg), jax.random.key(0))["params"]["network"]
  kernel = np.asarray(params["mlp_conv"]["layer1"]["kernel_scale0"])
  std = math.sqrt(1.0 / cfg.n_hidden_conv) / cfg.filter_size**2
  assert abs(kernel.std() / std - 1) < 0.05
  assert abs(kernel.mean()) < 4 * std / math.sqrt(kernel.size)
  for leaf in jax.tree.leaves({k: v for k, v in params.items()}):
    if leaf.ndim == 1:
      np.testing.assert_array_equal(leaf, 0.0)  # all biases start at 0
  w = np.asarray(params["mlp_dense_lower"]["dense1"]["kernel"])  # square: orthogonal
  np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-4)
  w = np.asarray(params["mlp_dense_lower"]["dense0"]["kernel"])  # 784 x 500: orthonormal columns
  np.testing.assert_allclose(w.T @ w, np.eye(w.shape[1]), atol=1e-4)


def numpy_multiscale(x, kernels, biases, n_scales):
  """A direct loop implementation of the multi-scale layer, for comparison."""
  b, h, w, _ = x.shape
  acc = None
  for s in range(n_scales - 1, -1, -1):
    k = 2**s
    xd = x.reshape(b, h // k, k, w // k, k, -1).mean(axis=(2, 4))
    f = kernels[s].shape[0]
    p = (f - 1) // 2
    xp = np.pad(xd, ((0, 0), (p, p), (p, p), (0, 0)))
    y = np.zeros(xd.shape[:3] + (kernels[s].shape[-1],))
    for i in range(f):
      for j in range(f):
        y += xp[:, i:i + xd.shape[1], j:j + xd.shape[2], :] @ kernels[s][i, j]
    y += biases[s]
    y = np.where(y > 0, y, 0.05 * y)
    acc = y if acc is None else acc + y
    if s > 0:
      acc = acc.repeat(2, axis=1).repeat(2, axis=2)
  return acc / n_scales


@pytest.mark.parametrize("conv", ["xla", "cpu"])
@pytest.mark.parametrize("n_scales", [1, 2, 3])
def test_multiscale_convolution_against_direct_loops(conv, n_scales):
  layer = networks.MultiScaleConvolution(5, n_scales, 3, kernels.conv_layer(conv))
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  params = layer.init(jax.random.key(0), x)
  # Nonzero biases, so the test sees them.
  params = jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a * 20, params)
  p = params["params"]
  expected = numpy_multiscale(x.astype(np.float64),
                              [np.asarray(p[f"kernel_scale{s}"], np.float64) for s in range(n_scales)],
                              [np.asarray(p[f"bias_scale{s}"], np.float64) for s in range(n_scales)],
                              n_scales)
  np.testing.assert_allclose(layer.apply(params, x), expected, rtol=1e-4, atol=1e-5)


def test_reference_dense_lower_switch():
  cfg = tiny_model_config(n_layers_conv=3, n_layers_dense_lower=2)
  shapes = lambda cfg: jax.eval_shape(lambda: diffusion.init_params(diffusion.make_model(cfg),
                                                                    jax.random.key(0)))
  assert len(shapes(cfg)["params"]["network"]["mlp_dense_lower"]) == 2
  cfg.reference_dense_lower = True
  assert len(shapes(cfg)["params"]["network"]["mlp_dense_lower"]) == 3
  # The reference pathway ends with a LeakyReLU: its output is bounded below by 0.05 x.
  mlp = networks.MLP([4, 3], activate_final=True)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(50, 6)), jnp.float32)
  p = jax.jit(mlp.init)(jax.random.key(0), x)
  linear = jax.jit(networks.MLP([4, 3], activate_final=False).apply)(p, x)
  np.testing.assert_allclose(jax.jit(mlp.apply)(p, x),
                             np.where(linear > 0, linear, 0.05 * linear), rtol=1e-6)


def test_network_without_dense_lower_pathway():
  cfg = tiny_model_config(n_hidden_dense_lower=0)
  model = diffusion.make_model(cfg)
  params = jax.eval_shape(lambda: diffusion.init_params(model, jax.random.key(0)))
  assert "mlp_dense_lower" not in params["params"]["network"]
  assert params["params"]["network"]["mlp_dense_upper"]["dense0"]["kernel"].shape[0] == cfg.n_hidden_conv
  assert diffusion.count_params(params) == expected_param_count(cfg) - _dense_count(cfg)


def _dense_count(cfg):
  pixels = cfg.spatial_width**2
  widths = ([cfg.n_colors * pixels] + [cfg.n_hidden_dense_lower] * (cfg.n_layers_dense_lower - 1)
            + [cfg.n_hidden_dense_lower_output * pixels])
  return (sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
          + cfg.n_hidden_dense_lower_output * cfg.n_hidden_dense_upper)
