"""What an experiment provides: the declared interface that the loop, the bound,
the sampler and every entry point use.

An experiment (the 2015 image model on MNIST, binomial diffusion of the
heartbeat, the Swiss roll, ...) is an `Experiment`: its config sections and
their checks, its model, its data and how a batch of it becomes x_0, its
dequantisation width, the unit of its bound, the sampling modes it supports
and how it writes them, its figures, and the paper's numbers where there
are any. Experiments are found by name in dpm_jax.registry, and nowhere
else: the training loop, `experiments.sample`, `experiments.evaluate`,
`--print_config`, `dpm-jax` and the notebook all ask the registry.

`Experiment.build(config, dataset, stats)` binds one to a config and data: a
`Task`, what the training loop, dpm_jax.evaluate and dpm_jax.sampling take.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import os
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import errors
from dpm_jax import sampling


class Experiment(abc.ABC):
  """One experiment: what differs between the paper's models and data sets.

  Attributes (class or instance):
    name: the registry's key, and `config.experiment`.
    description: one line, for listings.
    unit: what the bound is reported per: 'pixel' (colour channels summed),
      'sequence' or 'point'.
    sampling_modes: the modes of `generate` ('sample' always).
    paper: the paper's Table 1 numbers (`K_bits`, `K_minus_L_null_bits`), or
      None where the paper has none.
    final_report: whether training ends with the bound exact over t on
      `report_data` and `figures` (dpm_jax.table1), written to eval.json.
    report_source: what report_data are: 'fresh' draws, or 'held_out' examples.
  """
  name: str
  description: str
  unit: str
  sampling_modes: Sequence[str] = ("sample",)
  paper: Optional[Mapping[str, float]] = None
  final_report: bool = False
  report_source: str = "fresh"  # the final report's examples: 'fresh' draws or 'held_out' ones

  # --- config --------------------------------------------------------------

  @abc.abstractmethod
  def default_config(self) -> ml_collections.ConfigDict:
    """The full config: config_lib.base_config() with this experiment's model and
    data sections and the recipe's defaults (experiments/configs/<name>.py starts here)."""

  @abc.abstractmethod
  def tiny_config(self) -> ml_collections.ConfigDict:
    """A seconds-long version on a CPU (a small model, few steps): for tests, the
    notebook's smoke mode and a first look (`--config=<name>:tiny`)."""

  def variant(self, name: str) -> ml_collections.ConfigDict:
    """The config of a named variant ('tiny'); the `arg` of `--config=<file>:<arg>`.

    Raises:
      errors.UserError: an unknown variant.
    """
    if name == "tiny":
      return self.tiny_config()
    raise errors.UserError(f"The {self.name} config has no variant {name!r}; its variants: "
                                 "'tiny' (e.g. --config=" + self.name + ":tiny).")

  @abc.abstractmethod
  def validate(self, config: ml_collections.ConfigDict) -> None:
    """Checks the model and data sections and their relations with the others.

    Raises:
      errors.UserError: naming the first field outside its domain.
    """

  def config_sources(self) -> list:
    """Source files whose comments describe this experiment's fields (--print_config):
    dpm_jax/config.py, then the modules of this experiment's classes, the most
    derived last."""
    classes = [c for c in reversed(type(self).__mro__)
               if issubclass(c, Experiment) and c is not Experiment]
    files = [inspect.getsourcefile(config_lib)] + [inspect.getsourcefile(c) for c in classes]
    return list(dict.fromkeys(files))

  # --- model ---------------------------------------------------------------

  @abc.abstractmethod
  def make_model(self, config: ml_collections.ConfigDict) -> nn.Module:
    """The model (dpm_jax.diffusion's module docstring) of a validated config."""

  # --- data ----------------------------------------------------------------

  @abc.abstractmethod
  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    """The stored examples config.data names, with their provenance.

    Raises:
      errors.UserError: data that cannot be found or read (one line, with the fix).
    """

  def check_data(self, config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> None:
    """Raises errors.UserError if the examples do not fit the model (their shape)."""
    shape = tuple(self.make_model(config).data_shape)
    if tuple(dataset.train.shape[1:]) != shape:
      raise errors.UserError(
          f"The data's examples are {tuple(dataset.train.shape[1:])} but the model expects "
          f"{shape}.")

  def data_stats(self, config: ml_collections.ConfigDict, dataset: data_lib.Dataset) -> dict:
    """How stored examples map to model units, as JSON-able data (saved with the run)."""
    del config, dataset
    return {}

  def prepare(self, batch, stats: Mapping) -> jax.Array:
    """A batch of stored examples -> x_0 in model units (jittable)."""
    del stats
    return jnp.asarray(batch, jnp.float32)

  def uniform_noise(self, stats: Mapping) -> float:
    """The dequantisation width in model units (0: continuous data, none)."""
    del stats
    return 0.0

  def eval_extras(self, config: ml_collections.ConfigDict, stats: Mapping, mean: float,
                  stderr: float) -> dict:
    """More metrics of a test bound (mean, stderr in bits per unit), each named for what it is."""
    del config, stats, mean, stderr
    return {}

  def eval_summary(self, record: Mapping) -> str:
    """eval_extras' metrics (in `record`, prefixed 'eval/' or not) as words for the
    progress line, starting with '; ' ('' for none)."""
    del record
    return ""

  def report_data(self, config: ml_collections.ConfigDict, num: int, seed: int) -> np.ndarray:
    """`num` examples for the final report's bound (fresh draws where the data has a generator).

    Raises:
      errors.UserError: the experiment has no final report.
    """
    del config, num, seed
    raise errors.UserError(f"The {self.name} experiment has no final report.")

  def reference_values(self, config: ml_collections.ConfigDict) -> dict:
    """Values to print beside the paper's: e.g. the data's true log likelihood."""
    del config
    return {}

  # --- outputs -------------------------------------------------------------

  def write_samples(self, samples: np.ndarray, path: str, stats: Mapping) -> str:
    """Writes a picture of samples (model units) to `path`; returns it."""
    raise NotImplementedError

  def write_picture(self, out: Mapping, path: str, stats: Mapping) -> str:
    """A picture of `generate`'s output (output units) at `path`; returns it."""
    return self.write_samples(np.asarray(out["samples"]), path, stats)

  def to_output_units(self, x: np.ndarray, stats: Mapping) -> np.ndarray:
    """Model units -> the units samples are saved in (.npz): [0, 1] pixels for images."""
    del stats
    return np.asarray(x)

  def generate(self, task: "Task", params: Any, mode: str, key: jax.Array, *, num_images: int,
               record_t: Sequence[int] = (), skip_first_step: bool = False,
               true_examples: Optional[np.ndarray] = None, should_stop=None,
               **options) -> dict:
    """Samples in one of `sampling_modes`, in output units.

    Args:
      task, params: the model and its parameters.
      mode: one of sampling_modes.
      key: the samples' PRNG key.
      num_images: how many.
      record_t: time steps whose states to return too (sampling.make_sampler).
      skip_first_step: stop at x_0, as the reference sampler.
      true_examples: stored examples to condition on (conditional modes).
      should_stop: polled between chunks of the trajectory; a stop raises
        errors.Stopped.
      **options: the mode's settings (e.g. denoise_sigma).

    Returns:
      dict with 'samples' (N, ...), 'states' (K, N, ...) when record_t is
      given, and the conditional modes' 'true' and 'observed'.

    Raises:
      errors.UserError: a mode this experiment does not declare.
    """
    del true_examples, options
    check_mode(self, mode)
    sampler = sampling.make_sampler(task.model, num_images=num_images, record_t=record_t,
                                    skip_first_step=skip_first_step)
    result = sampler(params, key, should_stop=should_stop)
    samples, states = result if record_t else (result, None)
    out = {"samples": self.to_output_units(samples, task.stats),
           "record_t": np.asarray(list(record_t), np.int32)}
    if states is not None:
      out["states"] = self.to_output_units(states, task.stats)
    return out

  def check_size(self, config: ml_collections.ConfigDict, size: Sequence[int]) -> None:
    """Raises errors.UserError unless the model samples examples of this size."""
    del config
    raise errors.UserError(f"The {self.name} experiment samples at its data's size only, "
                           f"not {tuple(size)}.")

  def load_image(self, config: ml_collections.ConfigDict, path: str) -> np.ndarray:
    """An image file as an example to condition on (image experiments)."""
    del config
    raise errors.UserError(f"The {self.name} experiment has no images to read {path} into.")

  def figures(self, task: "Task", params: Any, examples: np.ndarray, workdir: str,
              key: jax.Array) -> list:
    """The final report's figures (files in workdir); returns their paths."""
    del task, params, examples, workdir, key
    return []

  # --- binding -------------------------------------------------------------

  def build(self, config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None,
            stats: Optional[Mapping] = None) -> "Task":
    """This experiment bound to a config and data.

    Args:
      config: a config of this experiment (validated here).
      dataset: the stored examples; loaded from config.data if None.
      stats: a run's saved data_stats; computed from the training set if None.
    """
    self.validate(config)
    dataset = dataset if dataset is not None else self.load_data(config)
    if len(dataset.train):
      self.check_data(config, dataset)
    if stats is None:
      stats = self.data_stats(config, dataset)
    return Task(self, config, self.make_model(config), dataset, dict(stats))


def check_mode(experiment: Experiment, mode: str) -> None:
  if mode not in experiment.sampling_modes:
    raise errors.UserError(
        f"The {experiment.name} experiment samples in the mode(s) "
        f"{', '.join(experiment.sampling_modes)}, not {mode!r}.")


@dataclasses.dataclass
class Task:
  """An experiment bound to a config, its data and their map to model units.

  Attributes:
    experiment: the Experiment.
    config: the run's config.
    model: the model.
    data: the stored examples (data_lib.Dataset).
    stats: how stored examples map to model units (JSON-able; saved with
      every checkpoint, so a resumed run uses the same map).
  """
  experiment: Experiment
  config: ml_collections.ConfigDict
  model: nn.Module
  data: data_lib.Dataset
  stats: dict

  @property
  def train(self) -> np.ndarray:
    return self.data.train

  @property
  def test(self) -> np.ndarray:
    return self.data.test

  @property
  def name(self) -> str:
    return self.data.name

  @property
  def unit(self) -> str:
    return self.experiment.unit

  @property
  def uniform_noise(self) -> float:
    return self.experiment.uniform_noise(self.stats)

  def prepare(self, batch) -> jax.Array:
    return self.experiment.prepare(batch, self.stats)

  def eval_extras(self, mean: float, stderr: float) -> dict:
    return self.experiment.eval_extras(self.config, self.stats, mean, stderr)

  def write_samples(self, samples, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return self.experiment.write_samples(np.asarray(samples), path, self.stats)


def empty_dataset(experiment: Experiment, config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """No examples, of the config's shape: for what needs only the model (sampling)."""
  shape = tuple(experiment.make_model(config).data_shape)
  empty = np.zeros((0,) + shape, np.float32)
  return data_lib.Dataset(empty, empty, f"{experiment.name} (no data loaded)")
