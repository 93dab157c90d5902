"""What an experiment provides (`Experiment`), and what it is bound to for a run (`Task`).

The training loop, the bound and the sampler take an experiment object; only
dpm_jax.registry and the entry points know the list of them.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import errors
from dpm_jax import outputs
from dpm_jax import sampling


@dataclasses.dataclass(frozen=True)
class Units:
  """How stored examples map to model units: here the identity (data stored as the
  model sees them, continuous: no dequantisation). Saved with every checkpoint,
  so that a resumed, sampled or evaluated run uses the same map.

  Attributes:
    uniform_noise: the dequantisation width in model units (0: none).
  """
  uniform_noise: float = 0.0

  def to_model(self, batch) -> jax.Array:
    """A batch of stored examples -> x_0 in model units (jittable)."""
    return jnp.asarray(batch, jnp.float32)

  def to_output(self, x) -> np.ndarray:
    """Model units -> the units samples are saved in."""
    return np.asarray(x)

  def extras(self, mean: float, stderr: float) -> dict:
    """More metrics of a test bound (mean, stderr in bits per unit), each named for what
    it is."""
    del mean, stderr
    return {}

  def summary(self, record: Mapping) -> str:
    """extras' metrics (in `record`, prefixed 'eval/' or not) as words for the progress
    line, starting with '; ' ('' for none)."""
    del record
    return ""

  def to_dict(self) -> dict:
    return {}


class Experiment:
  """One experiment: what differs between the paper's models and data sets.

  Attributes:
    name: its name (`config.experiment`, the registry's key).
    description: one line, for listings.
    unit: what the bound is reported per: 'pixel' (colour channels summed),
      'sequence' or 'point'.
    sampling_modes: the modes of `generate` ('sample' always).
    paper: the paper's Table 1 numbers (`K_bits`, `K_minus_L_null_bits`), or None.
    report_source: the examples of the final report (dpm_jax.table1): 'fresh'
      draws or 'held_out' ones; None: training has no final report.
    help: {"section.field": meaning} of every field of its config.
  """
  name: str
  description: str
  unit: str
  sampling_modes: Sequence[str] = ("sample",)
  paper: Optional[Mapping[str, float]] = None
  report_source: Optional[str] = None
  help: Mapping[str, str] = {}

  def default_config(self) -> ml_collections.ConfigDict:
    """Every field at its default: the shared sections (config_lib.base_config) with this
    experiment's model and data sections (experiments/configs/<name>.py starts here)."""
    raise NotImplementedError

  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Checks the model and data sections and their relations with the others.

    Raises:
      errors.UserError: naming the first field outside its domain.
    """
    raise NotImplementedError

  def make_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    """The model (dpm_jax.diffusion's module docstring) of a validated config."""
    raise NotImplementedError

  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """The stored examples config.data names, with their provenance.

    Raises:
      errors.UserError: data that cannot be found or read (the message says the fix).
    """
    raise NotImplementedError

  def units(self, config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None,
            saved: Optional[Mapping] = None) -> Units:
    """How stored examples map to model units: computed from the training set, or a
    run's saved map (Units.to_dict)."""
    del config, dataset, saved
    return Units()

  def write_picture(self, out: Mapping, path: str, units: Units) -> str:
    """A picture of `generate`'s output (output units; 'samples' at least) at `path`."""
    raise NotImplementedError

  def generate(self, task: "Task", params: Any, mode: str, key: jax.Array, *, num_images: int,
               record_t: Sequence[int] = (), skip_first_step: bool = False,
               true_examples: Optional[np.ndarray] = None, image: Optional[str] = None,
               image_size: Optional[Sequence[int]] = None, should_stop=None,
               **options) -> dict:
    """Samples in one of `sampling_modes`, in output units.

    Args:
      record_t, skip_first_step, should_stop: as sampling.make_sampler's.
      true_examples: stored examples to condition on (conditional modes).
      image: an image file to condition on instead (image experiments).
      image_size: the samples' (H, W), for models of any size (image experiments).
      **options: the mode's settings (e.g. denoise_sigma).

    Returns:
      dict with 'samples' (N, ...), 'states' (K, N, ...) when record_t is
      given, and the conditional modes' 'true' and 'observed'.

    Raises:
      errors.UserError: a mode, an image or a size this experiment does not support.
    """
    del true_examples, options
    check_mode(self, mode)
    if image is not None or image_size is not None:
      raise errors.UserError(f"The {self.name} experiment samples at its data's size only and "
                             "conditions on no image files.")
    sampler = sampling.make_sampler(task.model, num_images=num_images, record_t=record_t,
                                    skip_first_step=skip_first_step)
    result = sampler(params, key, should_stop=should_stop)
    samples, states = result if record_t else (result, None)
    out = {"samples": task.units.to_output(samples),
           "record_t": np.asarray(list(record_t), np.int32)}
    if states is not None:
      out["states"] = task.units.to_output(states)
    return out

  def final_report(self, task: "Task", run, should_stop=None) -> dict:
    """The final report of a finished run (dpm_jax.table1): the bound exact over t,
    eval.json and figures in the run directory.

    Raises:
      errors.UserError: the experiment has no final report.
    """
    del task, run, should_stop
    raise errors.UserError(f"The {self.name} experiment has no final report; evaluate it with "
                           "experiments.evaluate.")


def check_mode(experiment: Experiment, mode: str) -> None:
  if mode not in experiment.sampling_modes:
    raise errors.UserError(
        f"The {experiment.name} experiment samples in the mode(s) "
        f"{', '.join(experiment.sampling_modes)}, not {mode!r}.")


def validate(experiment: Experiment, config: ml_collections.ConfigDict) -> None:
  """Checks a whole config of this experiment: the shared sections and its own.

  Raises:
    errors.UserError: naming the first field outside its domain.
  """
  if config.get("experiment") != experiment.name:
    raise errors.UserError(f"The config is one of the {config.get('experiment')!r} experiment, "
                           f"not of {experiment.name!r}.")
  config_lib.validate_base(config)
  experiment.validate(config)


def saved_config(experiment: Experiment, saved: Mapping, where: str,
                 check: bool = True) -> ml_collections.ConfigDict:
  """A run's saved config (a checkpoint's), read like a config file.

  Fields added since it was saved take their defaults, which keep the earlier
  behaviour; fields this version does not know are kept, unused. Both are logged,
  one line each, naming the fields.

  Args:
    saved: the config as saved (a dict or ConfigDict).
    where: the checkpoint, for messages.
    check: whether to check every value against its domain (as validate).

  Raises:
    errors.UserError: with check, a field outside its domain, naming it and `where`.
  """
  config = ml_collections.ConfigDict(copy.deepcopy(
      saved.to_dict() if isinstance(saved, ml_collections.ConfigDict) else dict(saved)))
  defaults = experiment.default_config()
  known, have = dict(config_lib.leaves(defaults)), dict(config_lib.leaves(config))
  unknown = sorted(set(have) - set(known) - set(config_lib.LEGACY_FIELDS))
  if unknown:
    logging.warning("The config saved in %s has field(s) this version does not read, kept "
                    "unused: %s.", where, ", ".join(unknown))
  missing = [name for name in known if name not in have]
  if missing:
    logging.warning("The config saved in %s lacks field(s) added since; using their defaults: "
                    "%s.", where, ", ".join(f"{name} = {known[name]!r}" for name in missing))

  def fill(into, defaults):
    for key, value in defaults.items():
      if key not in into:
        into[key] = value
      elif isinstance(value, ml_collections.ConfigDict) and isinstance(
          into[key], ml_collections.ConfigDict):
        fill(into[key], value)

  fill(config, defaults)
  config.experiment = experiment.name
  if check:
    try:
      validate(experiment, config)
    except errors.UserError as err:
      raise errors.UserError(f"The config saved in {where} is not valid: {err}") from err
  return config


@dataclasses.dataclass
class Task:
  """An experiment bound to a config, its data and their map to model units."""
  experiment: Experiment
  config: ml_collections.ConfigDict
  model: nn.Module
  data: data_lib.Dataset
  units: Units


def build(experiment: Experiment, config: ml_collections.ConfigDict,
          dataset: Optional[data_lib.Dataset] = None, saved_units: Optional[Mapping] = None
          ) -> Task:
  """An experiment bound to a config and data.

  Args:
    config: a config of this experiment (validated here).
    dataset: the stored examples; loaded from config.data if None.
    saved_units: a run's saved Units.to_dict(); computed from the training set if None.

  Raises:
    errors.UserError: an invalid config, or examples whose shape the model does not take.
  """
  validate(experiment, config)
  model = experiment.make_model(config)
  dataset = dataset if dataset is not None else experiment.load_data(config)
  shape = tuple(model.data_shape)
  if len(dataset.train) and tuple(dataset.train.shape[1:]) != shape:
    raise errors.UserError(
        f"The data's examples are {tuple(dataset.train.shape[1:])} but the model expects "
        f"{shape}; set the model's size (model.spatial_width, model.n_colors for images) "
        "to the data's, or choose the matching config (experiments/configs/).")
  units = experiment.units(config, dataset if saved_units is None else None, saved_units)
  return Task(experiment, config, model, dataset, units)


def write_outputs(task: Task, out: Mapping, path: str) -> str:
  """Writes generate's output: its picture at `path` and its arrays beside it (.npz).

  Raises:
    errors.UserError: an array holds NaN or Inf; nothing is written.
  """
  outputs.require_finite(path, **out)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  task.experiment.write_picture(out, path, task.units)
  outputs.save_npz(os.path.splitext(path)[0] + ".npz", **out)
  return path


def empty_dataset(experiment: Experiment, config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """No examples, of the config's shape: for what needs only the model (sampling)."""
  shape = tuple(experiment.make_model(config).data_shape)
  empty = np.zeros((0,) + shape, np.float32)
  return data_lib.Dataset(empty, empty, f"{experiment.name} (no data loaded)")
