"""Small training runs that several test modules share (no JAX device set-up here)."""

import jax

from dpm_jax import data, metrics, train
from experiments.configs import test as test_config


def small_dataset(n_train=128, n_test=64):
  ds = data.load_embedded()
  return data.Dataset(ds.train[:n_train], ds.test[:n_test], "mnist_embedded_small")


def train_small(workdir, devices):
  """Six steps of the tiny config on 128 digits: (parameter leaves, metric records)."""
  config = test_config.get_config()
  config.train.update(num_steps=6, log_every_steps=2, eval_every_steps=3)
  state = train.train_and_evaluate(config, str(workdir), dataset=small_dataset(), devices=devices)
  return jax.tree.leaves(state.params), metrics.read_metrics(str(workdir))
