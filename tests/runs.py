"""Small training runs and configs that several test modules share (no JAX device set-up here)."""

import functools
import importlib

import jax

from dpm_jax import data, metrics, registry
from dpm_jax import train as train_lib
from experiments.configs import test as test_config


def config(name: str, variant: str = ""):
  """The config of experiments/configs/<name>.py (its `variant`, e.g. 'tiny')."""
  return importlib.import_module(f"experiments.configs.{name}").get_config(variant)


def train(config_, workdir=None, **kwargs):
  """train.train_and_evaluate with the experiment the config names."""
  return train_lib.train_and_evaluate(registry.of_config(config_), config_, workdir, **kwargs)


@functools.lru_cache(maxsize=1)
def digits() -> data.Dataset:
  """The embedded digits, as the tiny config's runs read them: the same data (and so the
  same scale, shift and epoch length) in every test compiles the same programs."""
  return data.load_embedded()


def small_digits() -> data.Dataset:
  """128 training and 64 test digits: the small runs' data."""
  ds = digits()
  return data.Dataset(ds.train[:128], ds.test[:64], "mnist_embedded_small")


def train_small(workdir, devices):
  """Six steps of the tiny config on 128 digits: (parameter leaves, metric records)."""
  config_ = test_config.get_config()
  config_.train.update(num_steps=6, log_every_steps=2, eval_every_steps=3)
  state = train(config_, str(workdir), dataset=small_digits(), devices=devices)
  return jax.tree.leaves(state.params), metrics.read_metrics(str(workdir))
