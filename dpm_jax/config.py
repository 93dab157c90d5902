"""Configs: every field's default, domain and meaning in one place; the shared sections.

An experiment config is an `ml_collections.ConfigDict` with the sections
  model      what the model is (the experiment's own fields; for the 2015 image
             model, IMAGE_MODEL: the names of the reference code's `model.py`
             and `regression.py` and of the seed notebook);
  data       where its examples come from (the experiment's own fields);
  train      steps, batch and the periodic actions;
  optimizer  the update rule and its learning rate;
  compute    how it runs, never what it computes (dpm_jax.execution);
  eval       the periodic test-set bound, and evaluation's defaults;
  sample     sampling defaults;
and the top-level fields `experiment` (its name), `seed`, `output_dir` and
`suffix`. Each section is a `Section` of `Field`s: a default, a domain
(checked before anything runs) and what the field means (--print_config).
Experiments build their config from these sections; the recipes (training
length, batch, learning rate) override them in experiments/configs/.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import ml_collections

from dpm_jax import errors
from dpm_jax import kernels


# ----------------------------------------------------------------------------
# Domains and fields.


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
    raise errors.UserError(f"{name} must be {domain.text}, got {value!r}."
                           + (f" {fix}" if fix else ""))


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field: its default, the values it may take, and what it means."""
  default: Any
  domain: Domain
  help: str


class Section(dict):
  """A config section's fields by name: Section(name=(default, domain, help), ...)."""

  def __init__(self, **fields):
    super().__init__({k: v if isinstance(v, Field) else Field(*v) for k, v in fields.items()})

  def with_defaults(self, **defaults) -> "Section":
    """The same fields, some with other defaults."""
    return Section(**{k: dataclasses.replace(f, default=defaults[k]) if k in defaults else f
                      for k, f in self.items()})

  def config(self, **overrides) -> ml_collections.ConfigDict:
    """A ConfigDict of the defaults, with `overrides`."""
    cfg = ml_collections.ConfigDict({k: f.default for k, f in self.items()})
    cfg.update(overrides)
    return cfg

  def check(self, section: str, cfg: ml_collections.ConfigDict) -> None:
    """Checks that cfg has every field and each lies in its domain.

    Raises:
      errors.UserError: the first missing field (with the closest existing
        name) or the first value outside its domain, naming `section.field`.
    """
    for name, field in self.items():
      if name not in cfg:
        close = difflib.get_close_matches(name, list(cfg.keys()), n=1)
        raise errors.UserError(
            f"The config's {section} section has no field {name!r}"
            + (f" (it has {close[0]!r})" if close else "")
            + "; start from the experiment's config (experiments/configs/) and override "
            "fields.")
      check_value(f"{section}.{name}", cfg[name], field.domain)


def help_of(**sections: Section) -> dict:
  """{"section.field": meaning} of the given sections ('' for top-level fields)."""
  return {(f"{s}." if s else "") + name: field.help
          for s, section in sections.items() for name, field in section.items()}


def leaves(config: ml_collections.ConfigDict, prefix: str = ""):
  """Yields ('section.field', value) for every field, nested sections flattened."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def describe(config: ml_collections.ConfigDict, help: Mapping[str, str], source: str) -> str:  # pylint: disable=redefined-builtin
  """The config as `name = value  # meaning` lines (--print_config)."""
  lines = [f"# {source}, with the command line's overrides. Set any field with "
           "--config.<name>=<value>."]
  for name, value in leaves(config):
    entry = f"{name} = {value!r}"
    lines.append(f"{entry:<44}  # {help[name]}" if name in help else entry)
  return "\n".join(lines)


def non_finite_fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """Yields 'section.field=value' for every float field that is NaN or infinite."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from non_finite_fields(value, f"{prefix}{key}.")
    elif isinstance(value, float) and not math.isfinite(value):
      yield f"{prefix}{key}={value}"


# ----------------------------------------------------------------------------
# The 2015 image model (dpm_jax.diffusion.DiffusionModel).

KL_MULTIPLIERS = ("T-1", "T")
BETA_LINKS = ("logit", "log")
T_SAMPLINGS = ("per_minibatch", "per_example", "stratified")

# The fields of the bound's loss (diffusion.make_loss_fn), which every model has.
LOSS = Section(
    trajectory_length=(1000, integer(2), "T, the diffusion steps (T - 1 of them learned)"),
    t_sampling=("per_minibatch", choice(*T_SAMPLINGS),
                "'per_minibatch': one t for the whole minibatch (the reference code); "
                "'per_example': one t per example; 'stratified': one per example, the batch "
                "spread evenly over the T-1 steps (diffusion.stratified_t); the same "
                "expectation, lower variance"),
    n_t_per_minibatch=(1, integer(1), "t values drawn per minibatch, the loss averaged over "
                       "them"),
    kl_multiplier=("T-1", choice(*KL_MULTIPLIERS),
                   "the bound's multiplier of the one-t KL: 'T-1' (t ranges over T-1 values) "
                   "or 'T' (the reference code's)"),
    dropout_rate=(0.0, real(0, 1, hi_open=True),
                  "dropout on every layer's input while training (the reference "
                  "--dropout_rate)"),
)

IMAGE_MODEL = Section(
    spatial_width=(28, integer(1), "image height and width, pixels"),
    n_colors=(1, integer(1), "colour channels"),
    n_temporal_basis=(10, integer(2), "J, bumps over t that mix the per-t outputs and the "
                      "beta schedule"),
    n_hidden_dense_lower=(500, integer(0), "units of the dense lower pathway (0: off)"),
    n_hidden_dense_lower_output=(2, integer(0), "the dense lower pathway's output channels "
                                 "per pixel"),
    n_hidden_dense_upper=(20, integer(1), "units of the per-pixel upper MLP"),
    n_hidden_conv=(20, integer(1), "channels of the multi-scale convolution layers"),
    n_layers_conv=(4, integer(1), "multi-scale convolution layers"),
    n_layers_dense_lower=(4, integer(0), "dense lower layers"),
    n_layers_dense_upper=(2, integer(1), "per-pixel upper layers"),
    n_scales=(1, integer(1), "scales of the multi-scale convolution (1, 1/2, 1/4, ...)"),
    step1_beta=(0.001, real(0, 1, hi_open=True), "the first step's noise variance beta_0"),
    filter_size=(3, integer(1), "convolution kernel width (odd)"),
    learn_beta=(False, BOOLEAN, "True: the beta schedule's basis coefficients are learned "
                "(the paper); False: fixed (the reference code)"),
    reference_dense_lower=(False, BOOLEAN, "True: the dense lower pathway has n_layers_conv "
                           "layers and ends with a LeakyReLU (the reference code's "
                           "regression.py)"),
    beta_link=("logit", choice(*BETA_LINKS), "'logit' (the reference code) or 'log' (the seed "
               "notebook's typo)"),
    **LOSS,
)


def get_model_config() -> ml_collections.ConfigDict:
  """A fresh image model section: the reference code's MNIST model."""
  return IMAGE_MODEL.config()


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Raises errors.UserError naming the first invalid image model field and how to fix it."""
  IMAGE_MODEL.check("model", cfg)
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
  has_dense = cfg.n_hidden_dense_lower > 0 and n_dense_lower_layers(cfg) > 0
  if has_dense and cfg.n_hidden_dense_lower_output < 1:
    raise errors.UserError(
        "model.n_hidden_dense_lower_output must be >= 1 when the dense lower "
        "pathway is on; set n_hidden_dense_lower=0 to turn the pathway off.")


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
# The shared sections.

OPTIMIZERS = ("rmsprop", "adam")
EVAL_METHODS = ("stratified", "one_t")
MASKS = ("right_half", "left_half", "centre_square", "random_pixels")

TOP = Section(
    experiment=("mnist", TEXT, "the experiment: its model, data and outputs"),
    seed=(0, integer(), "every random stream (data order, init, draws) derives from it"),
    output_dir=("runs", TEXT, "where a run directory is made when --workdir is not given: "
                "<output_dir>/dpm_<experiment><suffix>-<time>"),
    suffix=("", TEXT, "appended to the run directory's name"),
)
TRAIN = Section(
    batch_size=(512, integer(1), "examples per step, over all devices"),
    num_epochs=(100, integer(0), "length of the run in epochs, when num_steps = 0"),
    num_steps=(0, integer(0), "> 0: stop after this many steps instead of epochs"),
    batches_per_epoch=(0, integer(0), "steps per 'epoch' for the learning-rate decay and "
                       "num_epochs; 0: one pass over the training set (the reference code: "
                       "500)"),
    log_every_steps=(50, integer(1), "the progress line and train/* metrics"),
    eval_every_steps=(1000, integer(0), "the test-set bound (eval/*) and learning_curves.png; "
                      "0: off"),
    checkpoint_every_steps=(500, integer(0), "a checkpoint (also at the last step and on a "
                            "stop signal; 0: only then)"),
    keep_checkpoints=(3, integer(1), "the newest checkpoints kept"),
    sample_every_steps=(1000, integer(0), "a grid of samples in workdir/samples (also at the "
                        "last step); 0: off"),
    sample_num_images=(36, integer(1), "samples per grid"),
    max_nonfinite_steps=(20, integer(1), "stop after this many non-finite losses in a row"),
    ema_decay=(0.0, real(0, 1, hi_open=True), "an exponential moving average of the "
               "parameters, which evaluation and sampling use: 0 off (the reference code), "
               "e.g. 0.999; on or off for the whole run"),
)
OPTIMIZER = Section(
    name=("rmsprop", choice(*OPTIMIZERS), "'rmsprop' (the reference code's, no bias "
          "correction, after a rule that zeroes a non-finite gradient) or 'adam'"),
    learning_rate=(1e-3, real(0, lo_open=True), "the initial rate, decayed 10x per 1000 "
                   "epochs"),
    min_learning_rate=(1e-4, real(0, lo_open=True), "the decay's floor, at most "
                       "learning_rate"),
    rmsprop_decay=(0.9, real(0, 1, hi_open=True), "RMSprop's moving-average decay"),
    rmsprop_eps=(1e-10, real(0), "RMSprop's floor on the root mean square"),
)
COMPUTE = Section(
    conv=("auto", choice("auto", *kernels.CONV_KERNELS),
          "convolution kernel: 'auto' (the CPU kernel on a CPU, else XLA's), 'xla' or 'cpu'"),
    micro_batch_size=(-1, integer(-1), "each device's gradient accumulated over micro-batches "
                      "of this size: -1 auto (64 with the CPU kernel, where a device's part is a "
                      "larger multiple of 64), 0 off"),
    concurrent_micro_batches=(0, integer(0), "micro-batches a device computes side by side: "
                              "0 auto (on a CPU, the device's share of the cores), N"),
    cpu_devices=(0, integer(0), "on a CPU, the devices every batch is split over: 0 every "
                 "device (the entry points show one per core), N the first N; --cpu_devices "
                 "wins"),
    matmul_precision=("highest", choice("highest", "high", "default"),
                      "float32 matmuls and convolutions on GPUs and TPUs: 'highest' float32 "
                      "(the bound is a float32 bound), 'high' (3 bfloat16 passes, TF32 on "
                      "GPUs), 'default' (1 bfloat16 pass on TPUs, TF32 on GPUs); a CPU computes "
                      "float32 at each"),
)
EVAL = Section(
    method=("stratified", choice(*EVAL_METHODS),
            "'stratified': num_strata random t per test example, the standard error across "
            "examples; 'one_t': num_batches batches with one random t each (the reference "
            "code; heavy-tailed in t: typically optimistic)"),
    num_strata=(20, integer(1), "t strata per test example (method='stratified')"),
    num_images=(1000, integer(0), "test examples per evaluation (0: all)"),
    batch_size=(500, integer(1), "test examples per network call"),
    num_batches=(20, integer(2), "batches of method='one_t'"),
    seed=(0, integer(), "the evaluation's draws and its examples' order"),
)
SAMPLE = Section(
    skip_first_step=(False, BOOLEAN, "True: stop at x_0 without the fixed first step, as the "
                     "reference sampler"),
    num_intermediate=(4, integer(1), "states along the trajectory shown by "
                      "experiments.sample --intermediate"),
    denoise_sigma=(1.0, real(0, lo_open=True), "observation noise of denoising, model units "
                   "(the reference: 1)"),
    mask=("right_half", choice(*MASKS), "known pixels of inpainting (the reference: the right "
          "half)"),
)
SHARED = {"train": TRAIN, "optimizer": OPTIMIZER, "compute": COMPUTE, "eval": EVAL,
          "sample": SAMPLE}


def check_variant(experiment: str, variant: str, variants=("tiny",)) -> None:
  """Raises errors.UserError for a config variant (--config=<file>:<variant>) a config
  file does not define."""
  if variant and variant not in variants:
    raise errors.UserError(
        f"The {experiment} config has no variant {variant!r}; its variants: "
        + ", ".join(repr(v) for v in variants) + f" (e.g. --config={experiment}:tiny).")


def base_config(experiment: str) -> ml_collections.ConfigDict:
  """The top-level fields and the shared sections at their defaults (the reference MNIST
  recipe's values); an experiment adds its model and data sections."""
  config = TOP.config(experiment=experiment)
  for name, section in SHARED.items():
    config[name] = section.config()
  return config


def validate_base(config: ml_collections.ConfigDict) -> None:
  """Checks the shared sections and top-level fields, and the relations among them.

  The model and data sections are the experiment's (Experiment.validate).

  Raises:
    errors.UserError: naming the first field outside its domain, or the relation broken.
  """
  bad = list(non_finite_fields(config))
  if bad:
    raise errors.UserError(f"config fields must be finite numbers: {', '.join(bad)}.")
  for name, field in TOP.items():
    if name not in config:
      raise errors.UserError(f"The config has no field {name!r}; start from the experiment's "
                             "config (experiments/configs/) and override fields.")
    check_value(name, config[name], field.domain)
  for name, section in SHARED.items():
    if name not in config:
      raise errors.UserError(f"The config has no {name!r} section; start from the experiment's "
                             "config (experiments/configs/) and override fields.")
    section.check(name, config[name])
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


def changes(saved: Mapping, current: Mapping) -> list:
  """Every field, in every section, whose value differs between two configs (as dicts).

  A field that only one of them has (added or removed between versions of
  this code) is not a change: new fields default to the earlier behaviour.
  """
  a, b = (dict(leaves(ml_collections.ConfigDict(c))) for c in (saved, current))
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
