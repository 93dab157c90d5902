"""The experiments, by name: what the entry points and `open_run` use to find one.

Adding an experiment is one module (an Experiment), one entry in EXPERIMENTS
below and one config, experiments/configs/<name>.py; registering it puts it
in the tests' matrix (tests/test_matrix.py) and in `dpm-jax train`.
"""

from __future__ import annotations

import difflib
import os
from typing import Mapping, Optional

import ml_collections

from dpm_jax import data as data_lib
from dpm_jax import dead_leaves
from dpm_jax import errors
from dpm_jax import experiment as experiment_lib
from dpm_jax import heartbeat
from dpm_jax import images
from dpm_jax import rundir
from dpm_jax import swiss_roll
from dpm_jax import texture

EXPERIMENTS: Mapping[str, experiment_lib.Experiment] = {
    e.name: e for e in (images.MNIST, images.CIFAR10, heartbeat.HEARTBEAT, swiss_roll.SWISS_ROLL,
                        dead_leaves.DEAD_LEAVES, texture.TEXTURE)}


def get(name: str) -> experiment_lib.Experiment:
  """The experiment registered as `name`.

  Raises:
    errors.UserError: no such experiment (naming the closest one).
  """
  if name not in EXPERIMENTS:
    close = difflib.get_close_matches(str(name), list(EXPERIMENTS), n=1)
    raise errors.UserError(
        f"No experiment {name!r}" + (f"; did you mean {close[0]!r}?" if close else ".")
        + f" The experiments: {', '.join(EXPERIMENTS)}.")
  return EXPERIMENTS[name]


# Configs saved before the `experiment` field named their experiment by data.dataset.
_LEGACY_DATASETS = {"heartbeat": "heartbeat", "swiss_roll": "swiss_roll", "cifar10": "cifar10"}


def of_config(config: ml_collections.ConfigDict) -> experiment_lib.Experiment:
  """The experiment a config names (`config.experiment`; older runs: by data set)."""
  if "experiment" in config:
    return get(config.experiment)
  return get(_LEGACY_DATASETS.get(config.get("data", {}).get("dataset"), "mnist"))


def open_run(workdir: str, step: Optional[int] = None, params: str = "ema"):
  """(run, experiment) of a run directory: its parameters (`params`: as load_run's)
  and config (read by experiment.saved_config) at `step` (default: the latest).

  Raises:
    errors.UserError: no run there, a checkpoint that does not verify, or a saved
      config with a field outside its domain.
  """
  run = rundir.load_run(workdir, step, params)
  experiment = of_config(run.config)
  run.config = experiment_lib.saved_config(
      experiment, run.config, os.path.join(rundir.checkpoint_dir(workdir), str(run.step)))
  return run, experiment


def open_task(workdir: str, step: Optional[int] = None, with_data: bool = True,
              params: str = "ema"):
  """(run, task) of a run directory: the task holds the model and, with_data, the run's
  own data (run_data), else no examples (for what needs only the model).

  Raises:
    errors.UserError: as open_run and run_data.
  """
  run, experiment = open_run(workdir, step, params)
  dataset = (run_data(run, experiment) if with_data
             else experiment_lib.empty_dataset(experiment, run.config))
  return run, experiment_lib.build(experiment, run.config, dataset, run.stats)


def run_data(run: rundir.Run, experiment: experiment_lib.Experiment) -> data_lib.Dataset:
  """The examples a run was trained on, read again from where its config says.

  Raises:
    errors.UserError: the run was trained on arrays given from Python (no
      file holds them), or the data its config names are not the examples it
      was trained on (their fingerprints differ): it cannot be evaluated on
      the same data here.
  """
  recorded = run.data or {}
  if recorded.get("source") == "arrays":
    raise errors.UserError(
        f"The run in {run.workdir} was trained on arrays given from Python "
        f"({recorded.get('name')!r}: {recorded.get('num_train')} train / "
        f"{recorded.get('num_test')} test examples), which no file holds; sample or evaluate it "
        "from Python with the same arrays: experiment.build(experiment, run.config, dataset, "
        "run.stats).")
  dataset = experiment.load_data(run.config)
  if recorded.get("fingerprint") not in (None, data_lib.fingerprint(dataset)):
    raise errors.UserError(
        f"The data the run's config names ({dataset.name}: {len(dataset.train)} train / "
        f"{len(dataset.test)} test examples) are not the examples the run in {run.workdir} was "
        f"trained on ({recorded.get('source')}, {recorded.get('num_train')} train / "
        f"{recorded.get('num_test')} test, another fingerprint); point data.dir at the same "
        "files, or evaluate from Python with the same data.")
  return dataset
