"""Shared test helpers: tiny model configs that run in milliseconds on a CPU."""

import os

# Tests run on the CPU, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from dpm_jax import config as config_lib  # noqa: E402


def tiny_model_config(**overrides):
  """An MNIST-shaped model small enough for gradient checks."""
  cfg = config_lib.get_model_config("mnist")
  cfg.spatial_width = 8
  cfg.n_hidden_dense_lower = 12
  cfg.n_hidden_dense_lower_output = 2
  cfg.n_hidden_dense_upper = 6
  cfg.n_hidden_conv = 4
  cfg.n_layers_conv = 2
  cfg.n_layers_dense_lower = 2
  cfg.n_layers_dense_upper = 2
  cfg.n_scales = 2
  cfg.trajectory_length = 20
  cfg.n_temporal_basis = 4
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture
def tiny_config():
  return tiny_model_config()
