"""Small training runs that several test modules share (no JAX device set-up here)."""

import functools

import jax

from dpm_jax import data, metrics, train
from experiments.configs import test as test_config


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
  config = test_config.get_config()
  config.train.update(num_steps=6, log_every_steps=2, eval_every_steps=3)
  state = train.train_and_evaluate(config, str(workdir), dataset=small_digits(), devices=devices)
  return jax.tree.leaves(state.params), metrics.read_metrics(str(workdir))
