"""Configs: the image model's fields and presets, the shared sections, their domains.

An experiment config is an `ml_collections.ConfigDict` with the sections
  model      what the model is (the experiment's own fields; for the 2015 image
             model the names of the reference code's `model.py` and
             `regression.py` and of the seed notebook, so that the two can be
             read side by side);
  data       where its examples come from (the experiment's own fields);
  train      steps, batch and the periodic actions;
  optimizer  the update rule and its learning rate;
  compute    how it runs (never what it computes);
  eval       the periodic test-set bound;
  sample     sampling defaults;
and the top-level fields `experiment` (its name in dpm_jax.registry), `seed`,
`output_dir` and `suffix`. `base_config()` gives the shared sections; each
experiment adds its model and data sections (Experiment.default_config).

Every field has a domain, checked before anything runs (`check_fields`);
relations between fields are checked beside them. Fields that restore a
behaviour of the reference code which this project fixes by default are
grouped at the end of the model section and documented in the README
("Differences from the 2015 code and the seed").
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

from dpm_jax import errors
from dpm_jax import kernels

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


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError naming the first invalid field and how to fix it."""
  reference = mnist_model_config()
  missing = [k for k in reference.keys() if k not in cfg]
  if missing:
    raise errors.UserError(
        f"model config lacks field(s) {missing}; start from "
        "dpm_jax.config.get_model_config() and override what you need.")
  for name in _POSITIVE_INT_FIELDS:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise errors.UserError(
          f"model.{name} must be a positive integer, got {value!r}.")
  for name in _NON_NEGATIVE_INT_FIELDS:
    value = cfg[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise errors.UserError(
          f"model.{name} must be a non-negative integer, got {value!r}.")
  if not isinstance(cfg.trajectory_length, int) or cfg.trajectory_length < 2:
    raise errors.UserError(
        f"model.trajectory_length must be an integer >= 2 (the reverse "
        f"process has trajectory_length - 1 learned steps), got "
        f"{cfg.trajectory_length!r}.")
  if not isinstance(cfg.n_temporal_basis, int) or cfg.n_temporal_basis < 2:
    raise errors.UserError(
        f"model.n_temporal_basis must be an integer >= 2 (the bump width is "
        f"half the spacing of the centres), got {cfg.n_temporal_basis!r}.")
  if cfg.filter_size % 2 != 1:
    raise errors.UserError(
        f"model.filter_size must be odd so that a 'full' convolution crops "
        f"back to the input size, got {cfg.filter_size}.")
  factor = 2 ** (cfg.n_scales - 1)
  if cfg.spatial_width % factor:
    raise errors.UserError(
        f"model.spatial_width={cfg.spatial_width} is not divisible by "
        f"2**(n_scales-1)={factor}; lower model.n_scales or use images whose "
        f"width is a multiple of {factor}.")
  if not 0.0 <= float(cfg.step1_beta) < 1.0:
    raise errors.UserError(
        f"model.step1_beta must lie in [0, 1), got {cfg.step1_beta!r}.")
  if not 0.0 <= float(cfg.dropout_rate) < 1.0:
    raise errors.UserError(
        f"model.dropout_rate must lie in [0, 1), got {cfg.dropout_rate!r}.")
  for name, allowed in (("kl_multiplier", KL_MULTIPLIERS),
                        ("beta_link", BETA_LINKS),
                        ("t_sampling", T_SAMPLINGS)):
    if cfg[name] not in allowed:
      raise errors.UserError(
          f"model.{name} must be one of {allowed}, got {cfg[name]!r}.")
  for name in ("learn_beta", "reference_dense_lower"):
    if not isinstance(cfg[name], bool):
      raise errors.UserError(f"model.{name} must be True or False, "
                        f"got {cfg[name]!r}.")
  has_dense = cfg.n_hidden_dense_lower > 0 and n_dense_lower_layers(cfg) > 0
  if has_dense and cfg.n_hidden_dense_lower_output < 1:
    raise errors.UserError(
        "model.n_hidden_dense_lower_output must be >= 1 when the dense lower "
        "pathway is on; set n_hidden_dense_lower=0 to turn the pathway off.")


def add_loss_fields(cfg: ml_collections.ConfigDict, t_sampling: str = "per_example") -> None:
  """The fields make_loss_fn reads, for models other than the image model."""
  cfg.t_sampling = t_sampling     # 'per_example': one t per example; 'per_minibatch': one per batch
  cfg.n_t_per_minibatch = 1       # t values per minibatch, for t_sampling='per_minibatch'
  cfg.kl_multiplier = "T-1"       # 'T-1': t ranges over T-1 values; 'T': the reference code's
  cfg.dropout_rate = 0.0          # dropout on every layer's input while training


def validate_loss_fields(cfg: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError for an invalid trajectory length or field of add_loss_fields."""
  if not isinstance(cfg.trajectory_length, int) or cfg.trajectory_length < 2:
    raise errors.UserError(
        f"model.trajectory_length must be an integer >= 2, got {cfg.trajectory_length!r}.")
  n_t = cfg.n_t_per_minibatch
  if not isinstance(n_t, int) or isinstance(n_t, bool) or n_t < 1:
    raise errors.UserError(f"model.n_t_per_minibatch must be a positive integer, got {n_t!r}.")
  for name, allowed in (("t_sampling", T_SAMPLINGS), ("kl_multiplier", KL_MULTIPLIERS)):
    if cfg[name] not in allowed:
      raise errors.UserError(f"model.{name} must be one of {allowed}, got {cfg[name]!r}.")


def n_dense_lower_layers(cfg: ml_collections.ConfigDict) -> int:
  """Layers in the dense lower pathway (the reference code used n_layers_conv)."""
  return cfg.n_layers_conv if cfg.reference_dense_lower else cfg.n_layers_dense_lower


def frozen(cfg: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """Validates a model config and freezes it (Flax module fields must hash)."""
  cfg = ml_collections.ConfigDict(
      {k: v for k, v in cfg.items() if f"model.{k}" not in LEGACY_FIELDS})
  validate_model_config(cfg)
  return ml_collections.FrozenConfigDict(cfg)


# ----------------------------------------------------------------------------
# Domains of config fields and flags.


@dataclasses.dataclass(frozen=True)
class Domain:
  """The values a config field or flag may take, and how to say so.

  Attributes:
    accepts: value -> whether it lies in the domain (its type included).
    text: the domain in words, for the error ("a positive integer").
  """
  accepts: Callable[[Any], bool]
  text: str


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Domain:
  """Integers in [lo, hi] (either end open when None)."""
  if lo == 1 and hi is None:
    text = "a positive integer"
  elif lo == 0 and hi is None:
    text = "a non-negative integer"
  elif hi is None:
    text = "an integer" + ("" if lo is None else f" >= {lo}")
  else:
    text = f"an integer in {lo}..{hi}"
  return Domain(lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                text)


def real(lo: Optional[float] = None, hi: Optional[float] = None, *,
         lo_open: bool = False, hi_open: bool = False) -> Domain:
  """Finite numbers between lo and hi, each end closed unless *_open."""
  if lo is not None and hi is not None:
    text = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
  elif lo is not None:
    text = f"a finite number {'>' if lo_open else '>='} {lo:g}"
  elif hi is not None:
    text = f"a finite number {'<' if hi_open else '<='} {hi:g}"
  else:
    text = "a finite number"

  def accepts(v):
    if not _is_real(v):
      return False
    above = lo is None or (v > lo if lo_open else v >= lo)
    below = hi is None or (v < hi if hi_open else v <= hi)
    return above and below
  return Domain(accepts, text)


def choice(*options: str) -> Domain:
  return Domain(lambda v: v in options, f"one of {options}")


BOOLEAN = Domain(lambda v: isinstance(v, bool), "True or False")
TEXT = Domain(lambda v: isinstance(v, str), "a string")


def check_value(name: str, value: Any, domain: Domain, fix: str = "") -> None:
  """Raises errors.UserError naming `name` if value lies outside the domain."""
  if not domain.accepts(value):
    raise errors.UserError(f"{name} must be {domain.text}, got {value!r}." + (f" {fix}" if fix else ""))


def check_fields(section: str, cfg: ml_collections.ConfigDict,
                 domains: Mapping[str, Domain]) -> None:
  """Checks that a section has every field of `domains` and each lies in its domain.

  Raises:
    errors.UserError: the first missing field (with the closest existing name) or
      the first value outside its domain, naming `section.field`.
  """
  for name, domain in domains.items():
    if name not in cfg:
      close = difflib.get_close_matches(name, list(cfg.keys()), n=1)
      raise errors.UserError(
          f"The config's {section} section has no field {name!r}"
          + (f" (it has {close[0]!r})" if close else "")
          + "; start from the experiment's config (experiments/configs/) and override fields.")
    check_value(f"{section}.{name}", cfg[name], domain)


def non_finite_fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """Yields 'section.field=value' for every float field that is NaN or infinite."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from non_finite_fields(value, f"{prefix}{key}.")
    elif isinstance(value, float) and not math.isfinite(value):
      yield f"{prefix}{key}={value}"


# ----------------------------------------------------------------------------
# The shared sections.

OPTIMIZERS = ("rmsprop", "adam")
EVAL_METHODS = ("stratified", "one_t")
MASKS = ("right_half", "left_half", "centre_square", "random_pixels")


def base_config() -> ml_collections.ConfigDict:
  """The sections every experiment shares, with the reference MNIST recipe's values.

  An experiment's default_config() adds its model and data sections and
  overrides what its recipe changes; the config files in
  experiments/configs/ override the rest.
  """
  config = ml_collections.ConfigDict()
  config.experiment = "mnist"     # the experiment (dpm_jax.registry): its model, data and outputs
  config.seed = 0                 # every random stream (data order, init, draws) derives from it
  # Run directory when --workdir is not given: <output_dir>/dpm_<experiment><suffix>-<time>.
  config.output_dir = "runs"
  config.suffix = ""              # appended to the run directory's name

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 512          # examples per step, over all devices
  train.num_epochs = 100          # length of the run in epochs, when num_steps = 0
  train.num_steps = 0             # > 0: stop after this many steps instead of epochs
  # Steps per "epoch" for the learning-rate decay and num_epochs; 0 = one pass
  # over the training set. The reference code used 500 batches.
  train.batches_per_epoch = 0
  train.log_every_steps = 50      # the progress line and train/* metrics
  train.eval_every_steps = 1000   # the test-set bound (eval/*) and learning_curves.png; 0: off
  train.checkpoint_every_steps = 500  # and at the last step and on a stop signal; 0: only then
  train.keep_checkpoints = 3      # the newest checkpoints kept
  train.sample_every_steps = 1000  # and at the last step; 0: off (grids in workdir/samples)
  train.sample_num_images = 36    # samples per grid
  train.max_nonfinite_steps = 20  # stop after this many non-finite losses in a row

  # RMSprop as the reference code's (no bias correction), after a rule that
  # zeroes a non-finite gradient; the rate decays 10x per 1000 epochs.
  config.optimizer = opt = ml_collections.ConfigDict()
  opt.name = "rmsprop"            # 'rmsprop' (the reference code's) or 'adam'
  opt.learning_rate = 1e-3        # the initial rate
  opt.min_learning_rate = 1e-4    # the decay's floor, at most learning_rate
  opt.rmsprop_decay = 0.9         # RMSprop's moving-average decay
  opt.rmsprop_eps = 1e-10         # RMSprop's floor on the root mean square

  # How the model runs (dpm_jax.execution): never what it computes, and may change
  # when a run is resumed.
  config.compute = compute = ml_collections.ConfigDict()
  compute.conv = "auto"           # convolution kernel: 'auto' (CPU kernel on a CPU, else XLA's), 'xla', 'cpu'
  compute.micro_batch_size = -1   # gradient accumulated over micro-batches: -1 auto (64 with the CPU kernel), 0 off, N
  compute.concurrent_micro_batches = 0  # micro-batches a device computes side by side: 0 auto (its cores), N
  compute.cpu_devices = 0         # on a CPU, devices every batch splits over: 0 all, N the first N (--cpu_devices wins)

  config.eval = ev = ml_collections.ConfigDict()
  # 'stratified': num_strata random t per test example, the standard error
  # across examples; 'one_t': num_batches batches with one random t each, as
  # the reference code (heavy-tailed in t: typically optimistic, see evaluate.py).
  ev.method = "stratified"
  ev.num_strata = 20              # for method='stratified': t strata per test example
  ev.num_images = 1000            # test examples per evaluation (0: all)
  ev.batch_size = 500             # test examples per network call
  ev.num_batches = 20             # for method='one_t'
  ev.seed = 0                     # the evaluation's draws

  config.sample = sample = ml_collections.ConfigDict()
  sample.skip_first_step = False  # True: stop at x_0, as the reference sampler
  sample.num_intermediate = 4     # columns of experiments.sample --intermediate
  sample.denoise_sigma = 1.0      # observation noise of denoising (model units; reference: 1)
  sample.mask = "right_half"      # known pixels of inpainting (reference: the right half)
  return config


BASE_DOMAINS = {
    "train": {
        "batch_size": integer(1), "num_epochs": integer(0), "num_steps": integer(0),
        "batches_per_epoch": integer(0), "log_every_steps": integer(1),
        "eval_every_steps": integer(0), "checkpoint_every_steps": integer(0),
        "keep_checkpoints": integer(1), "sample_every_steps": integer(0),
        "sample_num_images": integer(1), "max_nonfinite_steps": integer(1)},
    "optimizer": {
        "name": choice(*OPTIMIZERS), "learning_rate": real(0, lo_open=True),
        "min_learning_rate": real(0, lo_open=True), "rmsprop_decay": real(0, 1, hi_open=True),
        "rmsprop_eps": real(0)},
    "compute": {"conv": choice("auto", *kernels.CONV_KERNELS), "micro_batch_size": integer(-1),
                "concurrent_micro_batches": integer(0), "cpu_devices": integer(0)},
    "eval": {"method": choice(*EVAL_METHODS), "num_strata": integer(1), "num_images": integer(0),
             "batch_size": integer(1), "num_batches": integer(2), "seed": integer()},
    "sample": {"skip_first_step": BOOLEAN, "num_intermediate": integer(1),
               "denoise_sigma": real(0, lo_open=True), "mask": choice(*MASKS)},
}
TOP_DOMAINS = {"experiment": TEXT, "seed": integer(), "output_dir": TEXT, "suffix": TEXT}


def validate_base(config: ml_collections.ConfigDict) -> None:
  """Checks the shared sections and top-level fields, and the relations among them.

  The model and data sections are the experiment's (Experiment.validate).

  Raises:
    errors.UserError: naming the first field outside its domain, or the relation broken.
  """
  bad = list(non_finite_fields(config))
  if bad:
    raise errors.UserError(f"config fields must be finite numbers: {', '.join(bad)}.")
  for name, domain in TOP_DOMAINS.items():
    if name not in config:
      raise errors.UserError(f"The config has no field {name!r}; start from the experiment's config "
                        "(experiments/configs/) and override fields.")
    check_value(name, config[name], domain)
  for section, domains in BASE_DOMAINS.items():
    if section not in config:
      raise errors.UserError(f"The config has no {section!r} section; start from the experiment's "
                        "config (experiments/configs/) and override fields.")
    check_fields(section, config[section], domains)
  t, o = config.train, config.optimizer
  if t.num_steps == 0 and t.num_epochs == 0:
    raise errors.UserError("Set train.num_steps > 0 (steps) or train.num_epochs > 0 (epochs); "
                      "both are 0.")
  if o.min_learning_rate > o.learning_rate:
    raise errors.UserError(
        f"optimizer.learning_rate={o.learning_rate:g} is below optimizer.min_learning_rate="
        f"{o.min_learning_rate:g}, the decay's floor, so every step would use "
        f"{o.min_learning_rate:g}; lower optimizer.min_learning_rate too (at most the "
        "learning rate).")
  T = config.model.get("trajectory_length") if "model" in config else None
  if config.eval.method == "stratified" and _is_int(T) and config.eval.num_strata > T - 1:
    raise errors.UserError(
        f"eval.num_strata must be in 1..{T - 1} (trajectory_length - 1), got "
        f"{config.eval.num_strata}.")


# ----------------------------------------------------------------------------
# Resuming with other settings.

# What a run is: its model, its data and the stream of its draws, and the
# optimiser whose state the checkpoint holds. Everything else (steps,
# periodic actions, the learning rate, how it runs, evaluation and sampling)
# may change when a run resumes.
FIXED_ON_RESUME = ("experiment", "seed", "model.", "data.", "optimizer.name")
# Where the data lives may change (a copy elsewhere), not what it is.
MOVABLE_DATA_FIELDS = ("data.dir", "data.tfds_data_dir", "data.download")
# Fields of earlier versions that no longer describe anything (model.conv_impl
# chose the convolution kernel, now compute.conv).
LEGACY_FIELDS = ("model.conv_impl",)


@dataclasses.dataclass(frozen=True)
class Change:
  """A field whose value differs between a run's checkpoint and the current config."""
  field: str
  saved: Any
  now: Any

  @property
  def may_change(self) -> bool:
    if self.field in MOVABLE_DATA_FIELDS:
      return True
    return not any(self.field == f or (f.endswith(".") and self.field.startswith(f))
                   for f in FIXED_ON_RESUME)

  def __str__(self) -> str:
    return f"{self.field}: checkpoint {self.saved!r}, now {self.now!r}"


def _flatten(d: Mapping, prefix: str = "") -> dict:
  out = {}
  for key, value in d.items():
    if isinstance(value, Mapping):
      out.update(_flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def changes(saved: Mapping, current: Mapping) -> list:
  """Every field, in every section, whose value differs between two configs (as dicts).

  A field that only one of them has (added or removed between versions of
  this code) is not a change: new fields default to the earlier behaviour.
  """
  a, b = _flatten(saved), _flatten(current)
  return [Change(k, a[k], b[k]) for k in sorted(set(a) & set(b))
          if k not in LEGACY_FIELDS and a[k] != b[k]]


def resume_error(changes_: Sequence[Change], workdir: str) -> Optional[str]:
  """The error for resuming with `changes_`, or None if every change is allowed."""
  fixed = [c for c in changes_ if not c.may_change]
  if not fixed:
    return None
  free = [c for c in changes_ if c.may_change]
  return (f"The run in {workdir} was made with other settings; these may not change when a run "
          "resumes (what the model is, its data and draws, the optimiser):\n  "
          + "\n  ".join(map(str, fixed))
          + ("\nThese differ too and may change:\n  " + "\n  ".join(map(str, free)) if free else "")
          + "\nUse the run's settings for the fixed ones (its config.json), or a new --workdir.")
