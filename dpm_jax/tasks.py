"""Experiments as the training loop sees them: a model, its data, and its outputs.

The loop (dpm_jax.train), the bound and the sampler are the same for every
experiment; a Task says what differs: the model, the stored examples and how
a batch of them becomes x_0 in model units, the dequantisation width, the
unit the bound is reported in, and how samples are drawn to a file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional

import flax.linen as nn
import ml_collections
import jax.numpy as jnp
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import evaluate
from dpm_jax import plotting


@dataclasses.dataclass
class Task:
  """An experiment's model and data, for the training loop.

  Attributes:
    model: a model (dpm_jax.diffusion's module docstring).
    train, test: the stored examples, (N, ...) each.
    name: the data set's name.
    stats: how stored examples map to model units, as JSON-able data; saved
      with every checkpoint, so a resumed run uses the same map.
    prepare: a batch of stored examples -> x_0 in model units (jittable).
    uniform_noise: the dequantisation width in model units (0: none).
    unit: what the bound is reported per ('pixel', 'sequence', 'point').
    eval_extras: (mean, stderr) of the test bound -> more metrics of it
      (logged with the prefix 'eval/').
    save_samples: (samples in model units, path) -> writes a picture of them.
  """
  model: nn.Module
  train: np.ndarray
  test: np.ndarray
  name: str
  stats: dict
  prepare: Callable
  uniform_noise: float
  unit: str
  eval_extras: Callable[[float, float], dict]
  save_samples: Callable[[np.ndarray, str], None]


def image_task(config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None,
               stats: Optional[dict] = None) -> Task:
  """The 2015 image model on MNIST, Fashion-MNIST or CIFAR-10.

  Args:
    config: an experiment config.
    dataset: loaded images (tests); loaded from config.data if None.
    stats: the saved DataStats of a resumed run; computed on the training
      set if None.
  """
  dataset = dataset or data_lib.load_dataset(config.data)
  m = config.model
  if dataset.image_shape != (m.spatial_width, m.spatial_width, m.n_colors):
    raise config_lib.ConfigError(
        f"The data's images are {dataset.image_shape} but the model expects "
        f"({m.spatial_width}, {m.spatial_width}, {m.n_colors}); set model.spatial_width / "
        "model.n_colors, or pick the matching config (experiments/configs/mnist.py or cifar10.py).")
  if stats is None:
    data_stats = data_lib.compute_stats(
        dataset.train, scale_from=config.data.scale_from,
        dequantization=config.data.dequantization, batch_size=config.train.batch_size,
        seed=config.seed)
  else:
    data_stats = data_lib.DataStats.from_dict(stats)

  def save_samples(samples, path):
    plotting.save_image_grid(data_lib.to_pixels(samples, data_stats), path)

  def eval_extras(mean, stderr):
    return {"nll_bpd": float(evaluate.nll_bits_per_dim(mean, data_stats, m.n_colors)),
            "nll_bpd_stderr": stderr / m.n_colors}

  return Task(
      model=diffusion.make_model(m, conv_kernel(config)), train=dataset.train,
      test=dataset.test, name=dataset.name, stats=data_stats.to_dict(),
      prepare=lambda batch: data_lib.to_model_units(batch, data_stats),
      uniform_noise=data_stats.uniform_noise, unit="pixel", eval_extras=eval_extras,
      save_samples=save_samples)


# The synthetic data sets of the paper's Table 1: name -> module with
# model_config, validate_model_config, make_model, sample_data and plots.
SYNTHETIC = ("heartbeat", "swiss_roll")


def synthetic_module(name: str):
  import importlib  # pylint: disable=g-import-not-at-top
  return importlib.import_module(f"dpm_jax.{name}")


def load_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The stored examples of an experiment config: images, or fresh synthetic draws."""
  if config.data.dataset in SYNTHETIC:
    module, m, d = synthetic_module(config.data.dataset), config.model, config.data
    return data_lib.Dataset(module.sample_data(d.num_train, config.seed, m),
                            module.sample_data(d.num_test, config.seed + 1, m), d.dataset)
  return data_lib.load_dataset(config.data)


def no_data(config: ml_collections.ConfigDict) -> data_lib.Dataset:
  """No examples, of the config's shape: a task that only samples needs no data."""
  m = config.model
  if config.data.dataset in SYNTHETIC:
    shape = synthetic_module(config.data.dataset).make_model(m).data_shape
    empty = np.zeros((0,) + tuple(shape), np.float32)
  else:
    empty = np.zeros((0, m.spatial_width, m.spatial_width, m.n_colors), np.uint8)
  return data_lib.Dataset(empty, empty, config.data.dataset)


def synthetic_task(config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None) -> Task:
  """A synthetic data set of the paper's Table 1: data in model units, no dequantisation."""
  module = synthetic_module(config.data.dataset)
  dataset = dataset or load_data(config)
  return Task(model=module.make_model(config.model), train=dataset.train, test=dataset.test,
              name=dataset.name, stats={}, prepare=lambda batch: jnp.asarray(batch, jnp.float32),
              uniform_noise=0.0, unit=module.UNIT, eval_extras=lambda mean, stderr: {},
              save_samples=module.save_samples)


def conv_kernel(config: ml_collections.ConfigDict) -> str:
  """config.compute.conv; 'auto' for runs saved before the compute section."""
  return config.get("compute", {}).get("conv", "auto")


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first invalid field of config.model."""
  if config.data.dataset in SYNTHETIC:
    synthetic_module(config.data.dataset).validate_model_config(config.model)
  else:
    config_lib.validate_model_config(config.model)


def build(config: ml_collections.ConfigDict, dataset: Optional[data_lib.Dataset] = None,
          stats: Optional[dict] = None) -> Task:
  """The Task of an experiment config (by config.data.dataset)."""
  if config.data.dataset in SYNTHETIC:
    return synthetic_task(config, dataset)
  return image_task(config, dataset, stats)


def samples_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "samples", f"step_{step:08d}.png")
