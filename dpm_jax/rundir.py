"""Run directories: Orbax checkpoints, the saved config and the data scale.

A run directory (workdir) holds:
  checkpoints/<step>/   Orbax checkpoints: 'state' (the train state pytree)
                        and 'meta' (step, config, data stats) per step.
  config.json           the full config of the run.
  data_stats.json       scale, shift and dequantisation width of the data.
  metrics.jsonl         one JSON object per logged step (dpm_jax.metrics).
  tensorboard/          TensorBoard event files.
  learning_curves.png   train and eval bound against step.
  samples/              sample grids or plots.

Sampling and evaluation read a run directory through `load_run` and never
import the training loop.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import os
import re
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from dpm_jax import data as data_lib

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored or does not fit this run."""


class _OrbaxFilter(py_logging.Filter):
  """Drops Orbax's INFO lines and its read-only notices."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno >= py_logging.WARNING:
      message = record.getMessage()
      return "read only" not in message and "read_only" not in message
    return False


def quiet_orbax_logs() -> None:
  """Hides Orbax's per-save INFO lines and read-only notices; other warnings show.

  The filter sits on absl's logger, so it works in notebooks as well as
  under absl.app.
  """
  logger = logging.get_absl_logger()
  if not any(isinstance(f, _OrbaxFilter) for f in logger.filters):
    logger.addFilter(_OrbaxFilter())


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, max_to_keep: Optional[int] = 3,
                 read_only: bool = False) -> ocp.CheckpointManager:
  """An Orbax CheckpointManager with items 'state' and 'meta' under workdir/checkpoints."""
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not read_only,
                                         read_only=read_only)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options,
                               item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state, meta: dict) -> None:
  """Saves the train state and the metadata at `step` (asynchronously)."""
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def _step_dirs(directory: str):
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if re.fullmatch(r"\d+", n))


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The newest complete checkpoint; raises if a step folder is unreadable.

  A folder named by a step number that Orbax does not list as complete is
  a damaged checkpoint: resuming from an older one, or from scratch, would
  silently discard training, so it is an error.
  """
  complete = set(manager.all_steps())
  on_disk = _step_dirs(str(manager.directory))
  broken = [s for s in on_disk if s not in complete]
  if broken:
    raise CheckpointError(
        f"Checkpoint folder(s) {[os.path.join(str(manager.directory), str(s)) for s in broken]} "
        "exist but are not complete Orbax checkpoints (corrupt, or written by "
        "another tool). Move them out of the checkpoints folder to resume from "
        "the newest complete checkpoint, or use a new --workdir.")
  return manager.latest_step()


def _on_first_device(tree):
  """Shapes and dtypes of `tree` as arrays on this process's first device.

  A checkpoint records the devices its arrays were sharded over; restoring
  into this target reads it whatever devices this process has.
  """
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def _saved_tree(manager: ocp.CheckpointManager, step: int):
  """The saved state's tree of array metadata (shapes, dtypes), read from the
  'state' item's own metadata: the step's metadata file lives one folder up."""
  path = epath.Path(manager.directory) / str(step) / "state"
  return ocp.StandardCheckpointHandler().metadata(path).tree


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The metadata saved at `step` (config, data stats), without the state."""
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as err:  # pylint: disable=broad-except
    raise _restore_error(manager, step, err) from err


def _restore_error(manager, step, err) -> "CheckpointError":
  path = os.path.join(str(manager.directory), str(step))
  return CheckpointError(
      f"Cannot restore the checkpoint at {path}: {type(err).__name__}: "
      f"{str(err)[:500]}\nThe checkpoint is corrupt or was written by an "
      "incompatible model/config. Move that step folder aside to resume "
      "from an earlier checkpoint, or start a new run with another --workdir.")


def restore(manager: ocp.CheckpointManager, step: int, abstract_state=None):
  """Restores (state, meta) at `step` on this process's first device: the state
  into the structure of abstract_state (arrays or shapes) if given, else as saved."""
  try:
    if abstract_state is None:
      abstract_state = _saved_tree(manager, step)
    state_args = ocp.args.StandardRestore(_on_first_device(abstract_state))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=state_args, meta=ocp.args.JsonRestore()))
  except Exception as err:  # pylint: disable=broad-except
    raise _restore_error(manager, step, err) from err
  return restored["state"], restored["meta"]


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config_to_json(config))


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(d)


# Fields that may change between a run and its resumption: where the data
# lives, and a field of earlier versions (model.conv_impl, now the compute
# section, which is never compared).
RESUMABLE_FIELDS = ("model.conv_impl", "data.dir", "data.tfds_data_dir", "data.download")


def diff_sections(saved: dict, current: dict, sections=("model", "data")) -> list:
  """Fields of the given sections that differ between two configs (as dicts)."""
  diffs = []
  for section in sections:
    a, b = saved.get(section, {}), current.get(section, {})
    for key in sorted(set(a) | set(b)):
      if f"{section}.{key}" not in RESUMABLE_FIELDS and a.get(key) != b.get(key):
        diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r} vs now {b.get(key)!r}")
  return diffs


@dataclasses.dataclass
class Run:
  """What sampling and evaluation need from a run directory."""
  config: ml_collections.ConfigDict
  params: Any
  stats: dict  # how stored examples map to model units (Task.stats)
  step: int
  workdir: str


def load_run(workdir: str, step: Optional[int] = None) -> Run:
  """Loads the config, data stats and parameters of a run (latest step by default)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise CheckpointError(
        f"No checkpoints in {checkpoint_dir(workdir)}; point --workdir at a run "
        "directory made by the training entry point (python -m experiments.mnist).")
  manager = make_manager(workdir, max_to_keep=None, read_only=True)
  try:
    if step is None:
      step = latest_step(manager)
      if step is None:
        raise CheckpointError(f"{checkpoint_dir(workdir)} holds no complete checkpoint yet.")
    elif step not in manager.all_steps():
      raise CheckpointError(
          f"No checkpoint at step {step} in {checkpoint_dir(workdir)}; "
          f"available: {list(manager.all_steps())}.")
    state, meta = restore(manager, step)
  finally:
    manager.close()
  params = jax.tree.map(np.asarray, state["params"])
  return Run(config=config_from_dict(meta["config"]), params=params,
             stats=meta["data_stats"], step=int(step), workdir=workdir)


def write_json(path: str, obj) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(obj if isinstance(obj, str) else json.dumps(obj, indent=2, sort_keys=True))
  os.replace(tmp, path)
