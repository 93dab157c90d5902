"""Run directories: Orbax checkpoints verified by their SHA-256, and the lock that
keeps one writer.

A checkpoint (checkpoints/<step>/) holds the items 'state' (the train state) and
'meta' (step, config, data stats and record, the state's SHA-256). Sampling and
evaluation read a run through `load_run` and never import the training loop.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging as py_logging
import os
import re
import shutil
import socket
import sys
import time
import traceback
from typing import Any, Callable, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from dpm_jax import errors
from dpm_jax import outputs


CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
LOCK_FILE = ".lock"


class _OrbaxFilter(py_logging.Filter):
  """Drops Orbax's INFO lines and its read-only notices; its errors keep one line (a
  failed background save logs the same traceback from several threads, and the
  training loop reports the cause itself)."""

  def filter(self, record):
    if "/orbax/" not in record.pathname:
      return True
    if record.levelno >= py_logging.ERROR:
      record.msg, record.args = record.getMessage().splitlines()[0][:300], None
      record.exc_info = record.exc_text = None
      return True
    if record.levelno >= py_logging.WARNING:
      message = record.getMessage()
      # Read-only notices, and a reader's view of a step that training removes meanwhile.
      return not any(notice in message for notice in
                     ("read only", "read_only", "Metadata file does not exist"))
    return False


def quiet_orbax_logs() -> None:
  """Installs _OrbaxFilter on absl's logger, so that it works in notebooks as well as
  under absl.app."""
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


def _host_array(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = x.addressable_data(0)  # a replicated array: this process's copy
  return np.ascontiguousarray(np.asarray(x))


def state_digest(state: Any) -> str:
  """SHA-256 of a state's arrays (each one's shape and bytes, sorted), so that it does not
  depend on how the tree is nested: a TrainState when training resumes, plain dicts
  when a run is loaded for sampling."""
  digests = sorted(
      hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()
      for a in map(_host_array, jax.tree.leaves(state)))
  return hashlib.sha256("".join(digests).encode()).hexdigest()


def state_nbytes(state: Any) -> int:
  return sum(int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(state))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict) -> None:
  """Saves the train state and the metadata, with the state's SHA-256, at `step`
  (asynchronously)."""
  meta = dict(meta, step=step, state_sha256=state_digest(state))
  try:
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  except Exception as err:  # pylint: disable=broad-except
    raise _save_error(manager, err) from err


def check_save_errors(manager: ocp.CheckpointManager, wait: bool = False) -> None:
  """Raises errors.UserError, cause first, if the last background save has failed;
  without `wait`, a save still in progress is checked at a later call."""
  if not wait and manager.is_saving_in_progress():
    return
  try:
    manager.wait_until_finished()  # raises the save's error
    manager.check_for_errors()
  except Exception as err:  # pylint: disable=broad-except
    raise _save_error(manager, err) from err


def _save_error(manager, err) -> errors.UserError:
  return errors.UserError(
      f"Saving a checkpoint in {manager.directory} failed: {_first_line(err)}\n"
      f"{last_good(manager)} {_free_space_note(os.path.dirname(str(manager.directory)))}")


def _first_line(err) -> str:
  text = str(err).strip().splitlines()
  return f"{type(err).__name__}: {text[0] if text else ''}"[:700]


def last_good(manager: ocp.CheckpointManager) -> str:
  """A sentence naming the newest checkpoint of the run, for error messages."""
  steps = manager.all_steps()
  if not steps:
    return "No checkpoint of this run was saved."
  return (f"The last good checkpoint is step {max(steps)}, in "
          f"{os.path.join(str(manager.directory), str(max(steps)))}.")


def _free_space_note(workdir: str) -> str:
  try:
    free = shutil.disk_usage(workdir).free
  except OSError:
    return ""
  return f"{free / 2**20:.1f} MiB are free there."


def _committed_steps(manager: ocp.CheckpointManager) -> list[int]:
  """The steps of complete checkpoints: Orbax lists any folder named by a step, and one
  it committed holds its step metadata (written before the commit's rename)."""
  return [s for s in manager.all_steps() if os.path.exists(
      os.path.join(str(manager.directory), str(s), "_CHECKPOINT_METADATA"))]


def _unfinished_steps(manager: ocp.CheckpointManager) -> list[int]:
  """Step folders that are not complete checkpoints."""
  directory = str(manager.directory)
  if not os.path.isdir(directory):
    return []
  complete = set(_committed_steps(manager))
  return sorted(int(n) for n in os.listdir(directory)
                if re.fullmatch(r"\d+", n) and int(n) not in complete)


def latest_step(manager: ocp.CheckpointManager) -> Optional[int]:
  """The newest complete checkpoint, or None.

  Raises:
    errors.UserError: a step folder is not a complete checkpoint (resuming from
      an older one, or from scratch, would silently discard training).
  """
  broken = _unfinished_steps(manager)
  if broken:
    raise errors.UserError(
        f"Checkpoint folder(s) {[os.path.join(str(manager.directory), str(s)) for s in broken]} "
        "exist but are not complete Orbax checkpoints (corrupt, or written by "
        "another tool). Move them out of the checkpoints folder to resume from "
        "the newest complete checkpoint, or use a new --workdir.")
  return max(_committed_steps(manager), default=None)


def _on_first_device(tree):
  """Shapes and dtypes of `tree` on this process's first device: a target that reads a
  checkpoint whatever devices it was sharded over."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)


def _saved_tree(manager: ocp.CheckpointManager, step: int):
  """The saved state's tree of shapes and dtypes."""
  path = epath.Path(manager.directory) / str(step) / "state"
  return ocp.StandardCheckpointHandler().metadata(path).tree


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  """The metadata saved at `step` (config, data stats), without the state."""
  try:
    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as err:  # pylint: disable=broad-except
    raise _restore_error(manager, step, err) from err


class _Corrupt(errors.UserError):
  """A checkpoint whose saved bytes cannot be read or fail their digest: the only kind
  that restore_newest_verified moves aside."""


def _corrupt(manager, step, why: str) -> _Corrupt:
  path = os.path.join(str(manager.directory), str(step))
  return _Corrupt(
      f"The checkpoint at {path} is corrupt: {why}\nResume training from the newest checkpoint "
      f"that verifies with --resume_verified (corrupt ones are moved to {CORRUPT_DIR}/, never "
      "deleted), load an earlier one with --step, or start a new run with another --workdir.")


def _restore_error(manager, step, err) -> _Corrupt:
  return _corrupt(manager, step, f"its files cannot be read ({_first_line(err)[:200]}...).")


def _verified(manager, step, restored) -> tuple[Any, dict]:
  saved = restored["meta"].get("state_sha256")
  if saved is not None and state_digest(restored["state"]) != saved:
    raise _corrupt(manager, step, "its arrays do not match the SHA-256 saved with them.")
  return restored["state"], restored["meta"]


def restore(manager: ocp.CheckpointManager, step: int,
            abstract_state: Any = None) -> tuple[Any, dict]:
  """Restores (state, meta) at `step` on this process's first device: the state
  into the structure of abstract_state (arrays or shapes) if given, else as saved.
  Checkpoints saved without a SHA-256 (earlier versions) are not verified.

  Raises:
    errors.UserError: the checkpoint's bytes cannot be read or do not match
      their SHA-256 (only then is it called corrupt), or it verifies but its
      arrays do not fit abstract_state (another optimiser, another version of
      the model).
  """
  def restore_into(target):
    return _verified(manager, step, manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_on_first_device(target)), meta=ocp.args.JsonRestore())))

  if abstract_state is not None:
    try:
      return restore_into(abstract_state)
    except _Corrupt:
      raise
    except Exception as err:  # pylint: disable=broad-except
      failure = err
  # Corrupt only if it does not restore as saved and verify.
  try:
    as_saved = restore_into(_saved_tree(manager, step))
  except _Corrupt:
    raise
  except Exception as err:  # pylint: disable=broad-except
    raise _restore_error(manager, step, err) from err
  if abstract_state is None:
    return as_saved
  path = os.path.join(str(manager.directory), str(step))
  raise errors.UserError(
      f"The checkpoint at {path} verifies, but its arrays do not fit this run's train state "
      f"({_first_line(failure)[:300]}): it was made by another version of this code or with "
      "another optimiser. Sample and evaluate it as it is, or start a new run with another "
      "--workdir.") from failure


def move_aside(manager: ocp.CheckpointManager, step: int) -> str:
  """Moves the folder of `step` into <workdir>/checkpoints_corrupt/; returns its new path."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR)
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f"{step}-{time.strftime('%y%m%dT%H%M%S')}")
  shutil.move(source, target)
  manager.reload()
  return target


def restore_newest_verified(manager: ocp.CheckpointManager,
                            restore_fn: Callable[[int], Any]) -> tuple[Optional[int], Any]:
  """(step, restore_fn(step)) of the newest checkpoint that restores and verifies,
  moving every newer one (and unfinished step folders) aside; (None, None) if none."""
  moved = []
  for step in _unfinished_steps(manager):
    moved.append(move_aside(manager, step))
    logging.warning("Moved the unfinished checkpoint folder of step %d to %s", step, moved[-1])
  for step in sorted(_committed_steps(manager), reverse=True):
    try:
      return step, restore_fn(step)
    except _Corrupt as err:
      moved.append(move_aside(manager, step))
      logging.warning("%s\nMoved it to %s", str(err).splitlines()[0], moved[-1])
  if moved:
    logging.warning("No checkpoint of this run verifies: training starts again at step 0 (the "
                    "%d moved aside are in %s).", len(moved), os.path.dirname(moved[-1]))
  return None, None


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config_to_json(config))


@dataclasses.dataclass
class Run:
  """What sampling and evaluation need from a run directory.

  Attributes:
    config: the run's config, as saved (experiment.saved_config reads it).
    params: the parameters evaluation and sampling use, numpy arrays.
    params_kind: which they are: 'ema' (the moving average of a run with
      train.ema_decay > 0) or 'raw' (the optimiser's).
    stats: how stored examples map to model units (experiment.Units.to_dict).
    data: what the run recorded of its data (data.Dataset.record), or None
      for runs saved before it was recorded.
  """
  config: ml_collections.ConfigDict
  params: Any
  params_kind: str
  stats: dict
  step: int
  workdir: str
  data: Optional[dict] = None


def load_run(workdir: str, step: Optional[int] = None, params: str = "ema") -> Run:
  """Loads the config, data stats and parameters of a run (latest step by default):
  with params='ema' their moving average where the run keeps one, else the raw ones.

  The run may be training meanwhile: a reader sees committed checkpoints only (those
  Orbax lists, listed again each time a step is chosen), and a step pruned or still
  being removed while it is read is a race, answered by choosing again. Only a step
  that stays listed and fails verification twice is called corrupt.

  Raises:
    errors.UserError: no run or no committed checkpoint there; `step` is not one
      of its checkpoints; or the checkpoint is corrupt.
  """
  if not os.path.isdir(checkpoint_dir(workdir)):
    raise errors.UserError(
        f"No checkpoints in {checkpoint_dir(workdir)}; point --workdir at a run "
        "directory made by the training entry point (python -m experiments.mnist).")
  quiet_orbax_logs()  # a read-only manager's notices are not faults
  chosen, state, meta = _read_committed(workdir, step)
  kind = "ema" if params == "ema" and "ema_params" in state else "raw"
  return Run(config=ml_collections.ConfigDict(meta["config"]),
             params=jax.tree.map(np.asarray, state["ema_params" if kind == "ema" else "params"]),
             params_kind=kind, stats=meta["data_stats"], step=chosen, workdir=workdir,
             data=meta.get("data"))


_READ_TRIES = 10


def _after_failed_read(seconds: float) -> None:
  """Waits `seconds` (a removal in progress finishes meanwhile), then collects what the
  failed Orbax read left behind. Its pending reads of the removed step complete on
  other threads, into an event loop already closed, and its coroutines raise as they
  are collected; that failure was answered (by reading again, or by the error
  raised), so it is not printed."""
  def hook(unraisable):
    frames = traceback.extract_tb(unraisable.exc_traceback)
    if not any("/orbax/" in f.filename or "/asyncio/" in f.filename for f in frames):
      sys.__unraisablehook__(unraisable)

  previous, sys.unraisablehook = sys.unraisablehook, hook
  try:
    time.sleep(seconds)
    gc.collect()
  finally:
    sys.unraisablehook = previous


def _read_committed(workdir: str, step: Optional[int]) -> tuple[int, Any, dict]:
  """(step, state, meta) of `step`, or of the newest committed step if None."""
  failures: dict[int, int] = {}
  for attempt in range(_READ_TRIES):
    try:
      manager = make_manager(workdir, max_to_keep=None, read_only=True)  # lists the steps
    except FileNotFoundError:  # a step removed while Orbax listed it
      continue
    try:
      steps = _committed_steps(manager)
      if step is not None and step not in steps:
        raise errors.UserError(
            f"No checkpoint at step {step} in {manager.directory}; available: {sorted(steps)}"
            " (training keeps the newest train.keep_checkpoints).")
      if not steps:
        raise errors.UserError(f"{manager.directory} holds no complete checkpoint yet.")
      chosen = max(steps) if step is None else step
      try:
        return chosen, *restore(manager, chosen)
      except _Corrupt as err:
        message = str(err)  # not the error: its frames hold the failed read
    finally:
      manager.close()
    _after_failed_read(0.1 * (attempt + 1))
    failures[chosen] = failures.get(chosen, 0) + 1
    if os.path.isdir(os.path.join(checkpoint_dir(workdir), str(chosen))) and failures[chosen] >= 2:
      raise _Corrupt(message)
  raise errors.UserError(
      f"Could not read a checkpoint in {checkpoint_dir(workdir)}: {_READ_TRIES} times in a row "
      "the one chosen was removed while being read. Lower the training's checkpoint rate, or "
      "read a copy of the run.")


def close_quietly(manager: ocp.CheckpointManager) -> None:
  """Waits for pending saves and closes the manager; a save error here was either
  reported already (check_save_errors) or is secondary to the error being raised."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as err:  # pylint: disable=broad-except
    logging.debug("Closing the checkpoint manager: %s", err)


def prepare_workdir(workdir: str) -> int:
  """Creates workdir and checks that it can be written; returns its free bytes."""
  outputs.writable_folder("the run directory", workdir, "choose a writable --workdir")
  os.makedirs(workdir, exist_ok=True)
  return shutil.disk_usage(workdir).free


def check_space(manager: ocp.CheckpointManager, nbytes: int) -> None:
  """Raises errors.UserError if a checkpoint of `nbytes` would not fit on the disk."""
  free = shutil.disk_usage(os.path.dirname(str(manager.directory))).free
  need = int(nbytes * 1.05) + 2**20
  if free < need:
    raise errors.UserError(
        f"Not enough disk space for the next checkpoint in {manager.directory}: it needs "
        f"about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. {last_good(manager)} "
        "Free some space, or copy the run directory to a larger disk and use the copy as "
        "--workdir, then rerun the same command to resume.")


def _start_time(pid: int) -> Optional[str]:
  """The process's start time in clock ticks since boot (Linux), to tell a reused pid."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive(owner: dict) -> bool:
  if owner.get("host") != socket.gethostname():
    return True  # cannot tell; assume it runs
  try:
    os.kill(int(owner["pid"]), 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass
  started = _start_time(int(owner["pid"]))
  return started is None or owner.get("start_time") in (None, started)


class WorkdirLock:
  """<workdir>/.lock: one training process writes a run directory at a time.

  The file names the process (pid, host, start time, command). After a crash
  or kill -9 it stays, and the next run sees that its process is gone (or its
  pid now belongs to another process) and takes it over.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self.held = False

  def _read(self) -> Optional[dict]:
    try:
      with open(self.path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # unreadable: written by a process that died mid-write

  def __enter__(self):
    pid = os.getpid()
    me = {"pid": pid, "host": socket.gethostname(), "start_time": _start_time(pid),
          "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        owner = self._read()
        if owner and _alive(owner):
          raise errors.UserError(
              f"The run directory {self.workdir} is in use by process {owner.get('pid')} on "
              f"{owner.get('host')} (since {owner.get('since')}: {owner.get('command')}). Wait "
              "for it to finish or stop it, or use another --workdir. If that process is not "
              f"running, delete {self.path}.") from None
        logging.warning("Taking over the stale lock %s (its process %s is gone).", self.path,
                        (owner or {}).get("pid"))
        if self._read() == owner:
          try:
            os.remove(self.path)
          except FileNotFoundError:
            pass
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(me, f)
      self.held = True
      return self
    raise errors.UserError(f"Could not take the lock {self.path}; another process keeps taking it.")

  def release(self) -> None:
    if self.held and (self._read() or {}).get("pid") == os.getpid():
      os.remove(self.path)
    self.held = False

  def __exit__(self, *exc):
    self.release()
    return False
