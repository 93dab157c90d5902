"""Model configurations: field names of the 2015 code, presets, and validation.

The model section of every experiment config is an `ml_collections.ConfigDict`
whose fields carry the names used by the reference code (`model.py`,
`regression.py`) and the seed notebook, so that a reader can hold the two side
by side. Fields that restore a behaviour of the reference code which this
project fixes by default are grouped at the end and documented in the README
("Differences from the 2015 code and the seed").
"""

from __future__ import annotations

import ml_collections

# Per-pixel output of the reverse model: (colors, {mu, beta}, n_temporal_basis).
_POSITIVE_INT_FIELDS = (
    "spatial_width",
    "n_colors",
    "n_hidden_dense_upper",
    "n_hidden_conv",
    "n_layers_conv",
    "n_layers_dense_upper",
    "n_t_per_minibatch",
    "n_scales",
    "filter_size",
)
_NON_NEGATIVE_INT_FIELDS = (
    "n_hidden_dense_lower",
    "n_hidden_dense_lower_output",
    "n_layers_dense_lower",
)

KL_MULTIPLIERS = ("T-1", "T")
BETA_LINKS = ("logit", "log")
T_SAMPLINGS = ("per_minibatch", "per_example", "stratified")


def mnist_model_config() -> ml_collections.ConfigDict:
  """The reference code's default model, for 28x28 greyscale digits."""
  cfg = ml_collections.ConfigDict()
  cfg.spatial_width = 28          # image height and width, pixels
  cfg.n_colors = 1                # colour channels
  cfg.trajectory_length = 1000    # T, the diffusion steps
  cfg.n_temporal_basis = 10       # bumps over t that mix the per-t outputs and the beta schedule
  cfg.n_hidden_dense_lower = 500  # units of the dense lower pathway (0: off)
  cfg.n_hidden_dense_lower_output = 2  # its output channels per pixel
  cfg.n_hidden_dense_upper = 20   # units of the per-pixel upper MLP
  cfg.n_hidden_conv = 20          # channels of the multi-scale convolution layers
  cfg.n_layers_conv = 4           # multi-scale convolution layers
  cfg.n_layers_dense_lower = 4    # dense lower layers
  cfg.n_layers_dense_upper = 2    # per-pixel upper layers
  cfg.n_t_per_minibatch = 1       # t values drawn per minibatch (the minibatch split among them)
  cfg.n_scales = 1                # scales of the multi-scale convolution
  cfg.step1_beta = 0.001          # beta_1, the first step's noise variance
  cfg.filter_size = 3             # convolution kernel width
  # Dropout on the input of every layer during training (the reference
  # `--dropout_rate` flag, which applied Blocks' dropout to all brick inputs).
  cfg.dropout_rate = 0.0
  # The paper learns the beta schedule; the reference code left it fixed (a
  # TODO). When True, the schedule's basis coefficients become parameters.
  cfg.learn_beta = False
  # 'per_minibatch': one t for the whole minibatch, as the reference code.
  # 'per_example': one t per image; the same expectation, lower variance.
  # 'stratified': one t per image, the batch spread evenly over the T-1 steps
  # (diffusion.stratified_t); the same expectation, lower variance still.
  cfg.t_sampling = "per_minibatch"

  # --- switches that restore the 2015 code's behaviour (see README) --------
  # 'T-1' (default, t ranges over T-1 values) or 'T' (the reference code).
  cfg.kl_multiplier = "T-1"
  # True: the dense lower pathway has n_layers_conv layers and ends with a
  # LeakyReLU, as in the reference code's regression.py.
  cfg.reference_dense_lower = False
  # 'logit' (the reference code) or 'log' (the seed notebook's typo).
  cfg.beta_link = "logit"
  return cfg


def cifar10_model_config() -> ml_collections.ConfigDict:
  """The CIFAR-10 recipe from the reference README (batch 200)."""
  cfg = mnist_model_config()
  cfg.spatial_width = 32
  cfg.n_colors = 3
  cfg.n_hidden_dense_lower = 1000
  cfg.n_hidden_dense_lower_output = 5
  cfg.n_hidden_conv = 100
  cfg.n_layers_conv = 6
  cfg.n_layers_dense_lower = 6
  cfg.n_layers_dense_upper = 4
  cfg.n_hidden_dense_upper = 100
  return cfg


PRESETS = {"mnist": mnist_model_config, "cifar10": cifar10_model_config}


def get_model_config(preset: str = "mnist") -> ml_collections.ConfigDict:
  """Returns a fresh model config for a named preset ('mnist' or 'cifar10')."""
  if preset not in PRESETS:
    raise ValueError(
        f"Unknown model preset {preset!r}; choose one of {sorted(PRESETS)}.")
  return PRESETS[preset]()


class ConfigError(ValueError):
  """A configuration value that cannot describe a valid model or run."""


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field and how to fix it."""
  reference = mnist_model_config()
  missing = [k for k in reference.keys() if k not in cfg]
  if missing:
    raise ConfigError(
        f"model config lacks field(s) {missing}; start from "
        "dpm_jax.config.get_model_config() and override what you need.")
  for name in _POSITIVE_INT_FIELDS:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(
          f"model.{name} must be a positive integer, got {value!r}.")
  for name in _NON_NEGATIVE_INT_FIELDS:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(
          f"model.{name} must be a non-negative integer, got {value!r}.")
  if not isinstance(cfg.trajectory_length, int) or cfg.trajectory_length < 2:
    raise ConfigError(
        f"model.trajectory_length must be an integer >= 2 (the reverse "
        f"process has trajectory_length - 1 learned steps), got "
        f"{cfg.trajectory_length!r}.")
  if not isinstance(cfg.n_temporal_basis, int) or cfg.n_temporal_basis < 2:
    raise ConfigError(
        f"model.n_temporal_basis must be an integer >= 2 (the bump width is "
        f"half the spacing of the centres), got {cfg.n_temporal_basis!r}.")
  if cfg.filter_size % 2 != 1:
    raise ConfigError(
        f"model.filter_size must be odd so that a 'full' convolution crops "
        f"back to the input size, got {cfg.filter_size}.")
  factor = 2 ** (cfg.n_scales - 1)
  if cfg.spatial_width % factor:
    raise ConfigError(
        f"model.spatial_width={cfg.spatial_width} is not divisible by "
        f"2**(n_scales-1)={factor}; lower model.n_scales or use images whose "
        f"width is a multiple of {factor}.")
  if not 0.0 <= float(cfg.step1_beta) < 1.0:
    raise ConfigError(
        f"model.step1_beta must lie in [0, 1), got {cfg.step1_beta!r}.")
  if not 0.0 <= float(cfg.dropout_rate) < 1.0:
    raise ConfigError(
        f"model.dropout_rate must lie in [0, 1), got {cfg.dropout_rate!r}.")
  for name, allowed in (("kl_multiplier", KL_MULTIPLIERS),
                        ("beta_link", BETA_LINKS),
                        ("t_sampling", T_SAMPLINGS)):
    if cfg[name] not in allowed:
      raise ConfigError(
          f"model.{name} must be one of {allowed}, got {cfg[name]!r}.")
  for name in ("learn_beta", "reference_dense_lower"):
    if not isinstance(cfg[name], bool):
      raise ConfigError(f"model.{name} must be True or False, "
                        f"got {cfg[name]!r}.")
  has_dense = cfg.n_hidden_dense_lower > 0 and n_dense_lower_layers(cfg) > 0
  if has_dense and cfg.n_hidden_dense_lower_output < 1:
    raise ConfigError(
        "model.n_hidden_dense_lower_output must be >= 1 when the dense lower "
        "pathway is on; set n_hidden_dense_lower=0 to turn the pathway off.")


def add_loss_fields(cfg: ml_collections.ConfigDict, t_sampling: str = "per_example") -> None:
  """The fields make_loss_fn reads, for models other than the image model."""
  cfg.t_sampling = t_sampling     # 'per_example': one t per example; 'per_minibatch': one per batch
  cfg.n_t_per_minibatch = 1       # t values per minibatch, for t_sampling='per_minibatch'
  cfg.kl_multiplier = "T-1"       # 'T-1': t ranges over T-1 values; 'T': the reference code's
  cfg.dropout_rate = 0.0          # dropout on every layer's input while training


def validate_loss_fields(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for an invalid trajectory length or field of add_loss_fields."""
  if not isinstance(cfg.trajectory_length, int) or cfg.trajectory_length < 2:
    raise ConfigError(
        f"model.trajectory_length must be an integer >= 2, got {cfg.trajectory_length!r}.")
  n_t = cfg.n_t_per_minibatch
  if not isinstance(n_t, int) or isinstance(n_t, bool) or n_t < 1:
    raise ConfigError(f"model.n_t_per_minibatch must be a positive integer, got {n_t!r}.")
  for name, allowed in (("t_sampling", T_SAMPLINGS), ("kl_multiplier", KL_MULTIPLIERS)):
    if cfg[name] not in allowed:
      raise ConfigError(f"model.{name} must be one of {allowed}, got {cfg[name]!r}.")


def n_dense_lower_layers(cfg: ml_collections.ConfigDict) -> int:
  """Layers in the dense lower pathway (the reference code used n_layers_conv)."""
  return cfg.n_layers_conv if cfg.reference_dense_lower else cfg.n_layers_dense_lower


# Fields of earlier versions' model sections that no longer describe the
# model: 'conv_impl' chose the convolution kernel, now config.compute.conv.
LEGACY_FIELDS = ("conv_impl",)


def frozen(cfg: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Validates a model config and freezes it (Flax module fields must hash)."""
  cfg = ml_collections.ConfigDict(
      {k: v for k, v in cfg.items() if k not in LEGACY_FIELDS})
  validate_model_config(cfg)
  return ml_collections.FrozenConfigDict(cfg)
