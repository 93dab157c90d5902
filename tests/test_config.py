"""Model config presets and validation."""

import pytest

import runs
from dpm_jax import config as config_lib
from dpm_jax import errors
from conftest import tiny_model_config


def test_shipped_image_models_validate():
  config_lib.validate_model_config(config_lib.get_model_config())
  for name in ("mnist", "cifar10", "texture", "dead_leaves"):
    for variant in ("", "tiny"):
      config_lib.validate_model_config(runs.config(name, variant).model)


def test_cifar_config_is_reference_readme_recipe():
  config = runs.config("cifar10")
  cfg = config.model
  assert (cfg.n_hidden_dense_lower, cfg.n_hidden_dense_lower_output, cfg.n_hidden_conv,
          cfg.n_layers_conv, cfg.n_layers_dense_lower, cfg.n_layers_dense_upper,
          cfg.n_hidden_dense_upper) == (1000, 5, 100, 6, 6, 4, 100)
  assert (cfg.spatial_width, cfg.n_colors) == (32, 3)
  assert config.train.batch_size == 200


def test_unknown_variant():
  with pytest.raises(errors.UserError, match="The cifar10 config has no variant 'huge'"):
    runs.config("cifar10", "huge")


@pytest.mark.parametrize("field,value,message", [
    ("n_scales", 5, r"spatial_width=8 is not divisible by 2\*\*\(n_scales-1\)=16"),
    ("n_temporal_basis", 1, "n_temporal_basis must be an integer >= 2"),
    ("trajectory_length", 1, "trajectory_length must be an integer >= 2"),
    ("n_hidden_conv", 0, "n_hidden_conv must be a positive integer"),
    ("n_layers_conv", -1, "n_layers_conv must be a positive integer"),
    ("spatial_width", 0, "spatial_width must be a positive integer"),
    ("n_hidden_dense_lower", -5, "n_hidden_dense_lower must be a non-negative integer"),
    ("filter_size", 4, "filter_size must be odd"),
    ("dropout_rate", 1.0, r"dropout_rate must be a number in \[0, 1\)"),
    ("step1_beta", -0.1, r"step1_beta must be a number in \[0, 1\)"),
    ("kl_multiplier", "T+1", "kl_multiplier must be one of"),
    ("beta_link", "probit", "beta_link must be one of"),
    ("t_sampling", "per_pixel", "t_sampling must be one of"),
])
def test_invalid_fields_are_named(field, value, message):
  cfg = tiny_model_config()
  cfg[field] = value
  with pytest.raises(errors.UserError, match=message):
    config_lib.validate_model_config(cfg)


def test_dense_output_required_when_dense_pathway_on():
  cfg = tiny_model_config(n_hidden_dense_lower_output=0)
  with pytest.raises(errors.UserError, match="n_hidden_dense_lower_output must be >= 1"):
    config_lib.validate_model_config(cfg)
  cfg.n_hidden_dense_lower = 0  # pathway off: no output needed
  config_lib.validate_model_config(cfg)


def test_missing_field():
  cfg = tiny_model_config()
  del cfg["n_scales"]
  with pytest.raises(errors.UserError, match=r"model section has no field 'n_scales'"):
    config_lib.validate_model_config(cfg)


def test_frozen_roundtrip_is_hashable():
  frozen = config_lib.frozen(tiny_model_config())
  hash(frozen)
  assert config_lib.frozen(frozen) == frozen


def test_reference_dense_lower_layer_count():
  cfg = tiny_model_config(n_layers_conv=3, n_layers_dense_lower=2)
  assert config_lib.n_dense_lower_layers(cfg) == 2
  cfg.reference_dense_lower = True
  assert config_lib.n_dense_lower_layers(cfg) == 3
