"""What training guarantees when things go wrong: divergence, corrupt checkpoints,
full or unwritable disks, SIGTERM in any phase, bad arguments, two writers."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import runs
from conftest import ROOT
from dpm_jax import errors
from dpm_jax import rundir, step as step_lib
from experiments.configs import test as test_config
from runs import digits

# Devices and run safety: the execution layer, tested in the whole suite (not the fast tier).
pytestmark = pytest.mark.slow


def config_of(**train_fields):
  config = test_config.get_config()
  config.train.update(train_fields)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """An 8-step run with checkpoints at 4 and 8: copy it before changing it."""
  workdir = tmp_path_factory.mktemp("trained")
  runs.train(config_of(num_steps=8, checkpoint_every_steps=4, eval_every_steps=8),
                           str(workdir), dataset=digits())
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m"] + list(args), cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)


# ----------------------------------------------------------------------------
# Only finite states are saved.


def test_divergence_saves_nothing_and_fails_naming_the_last_good_checkpoint(run):
  good = rundir.load_run(str(run))
  config = config_of(num_steps=17, checkpoint_every_steps=3, keep_checkpoints=2)
  config.optimizer.learning_rate = 1e30  # the loss is NaN from the second step on
  with pytest.raises(errors.UserError,
                     match=r"(?s)up to step 17 \(the last, .*last good checkpoint is step 8"):
    runs.train(config, str(run), dataset=digits())
  # Steps 9, 12 and 15 were not saved, so pruning kept the good ones.
  assert steps_on_disk(run) == [4, 8]
  after = rundir.load_run(str(run))
  for x, y in zip(jax.tree.leaves(good.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(x, y)


def test_only_finite_states_are_saved(run):
  state, _ = rundir.restore(rundir.make_manager(str(run), read_only=True), 8)
  leaves, treedef = jax.tree.flatten(jax.tree.map(np.array, state))
  assert bool(step_lib.all_finite(state))
  biggest = max(range(len(leaves)), key=lambda i: leaves[i].size)
  leaves[biggest].flat[3] = np.inf
  assert not bool(step_lib.all_finite(jax.tree.unflatten(treedef, leaves)))


# ----------------------------------------------------------------------------
# Checkpoints are verified on restore.


def _flip_bytes(step_dir):
  """Flips 16 bytes in the middle of the largest data file of a checkpoint's state."""
  data = step_dir / "state" / "ocdbt.process_0" / "d"
  path = max(data.iterdir(), key=lambda p: p.stat().st_size)
  raw = bytearray(path.read_bytes())
  middle = len(raw) // 2
  raw[middle:middle + 16] = bytes(b ^ 0xFF for b in raw[middle:middle + 16])
  path.write_bytes(bytes(raw))


def test_byte_flipped_checkpoint_is_an_error_and_resume_verified_skips_it(run):
  _flip_bytes(run / "checkpoints" / "8")
  config = config_of(num_steps=10, checkpoint_every_steps=4)
  with pytest.raises(errors.UserError, match=r"checkpoints/8 is corrupt"):
    runs.train(config, str(run), dataset=digits())
  with pytest.raises(errors.UserError, match=r"checkpoints/8 is corrupt"):
    rundir.load_run(str(run))
  assert rundir.load_run(str(run), step=4).step == 4
  state = runs.train(config, str(run), dataset=digits(),
                                   resume_verified=True)
  assert int(state.step) == 10 and steps_on_disk(run) == [4, 8, 10]
  (moved,) = os.listdir(run / "checkpoints_corrupt")
  assert moved.startswith("8-")
  records = [json.loads(line) for line in open(run / "metrics.jsonl")]
  assert [r["step"] for r in records if "train/loss" in r][-2:] == [5, 10]  # resumed at 4


def test_digest_mismatch_is_detected(run):
  """A changed array under an intact file format: only the saved SHA-256 can tell."""
  meta_file = run / "checkpoints" / "8" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  digest = meta["state_sha256"]
  meta["state_sha256"] = ("0" if digest[0] != "0" else "1") + digest[1:]
  meta_file.write_text(json.dumps(meta))
  with pytest.raises(errors.UserError, match="do not match the SHA-256"):
    rundir.load_run(str(run))


def test_a_reader_passes_over_an_unfinished_step_folder(run):
  """Training calls it an error (resuming before it would discard training); a reader
  reads the newest committed checkpoint and calls nothing corrupt."""
  os.makedirs(run / "checkpoints" / "15")
  assert rundir.load_run(str(run)).step == 8
  with pytest.raises(errors.UserError, match=r"No checkpoint at step 15 .*available: \[4, 8\]"):
    rundir.load_run(str(run), step=15)


def test_readers_of_a_run_that_checkpoints_every_step_see_verified_states(tmp_path):
  """Orbax commits a step by renaming its folder and prunes old ones by deleting them:
  loads that overlap either read again, and none fails."""
  workdir = tmp_path / "live"
  trainer = subprocess.Popen(
      [sys.executable, "-m", "experiments.heartbeat",
       "--config=experiments/configs/heartbeat.py:tiny", f"--workdir={workdir}",
       "--config.train.num_steps=80", "--config.train.checkpoint_every_steps=1",
       "--config.train.eval_every_steps=0", "--config.train.keep_checkpoints=2"],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  loaded, failures = [], []
  try:
    while trainer.poll() is None:
      if not (workdir / "checkpoints" / "1").exists() and not loaded:
        time.sleep(0.05)
        continue
      try:
        loaded.append(rundir.load_run(str(workdir)).step)  # verified against its SHA-256
      except Exception as err:  # pylint: disable=broad-except
        failures.append(f"{type(err).__name__}: {err}")
  finally:
    trainer.kill()
    _, stderr = trainer.communicate()
  assert trainer.returncode == 0, stderr[-2000:]
  assert not failures, failures[:5]
  assert len(loaded) >= 20 and len(set(loaded)) >= 10, loaded
  assert loaded == sorted(loaded)  # each read the newest committed step


def test_state_digest_ignores_nesting_but_not_values():
  a = {"w": np.arange(6.0).reshape(2, 3), "b": np.zeros(2)}
  assert rundir.state_digest(a) == rundir.state_digest([a["b"], {"x": a["w"]}])
  changed = {"w": a["w"].copy(), "b": a["b"]}
  changed["w"][1, 2] += 1e-6
  assert rundir.state_digest(a) != rundir.state_digest(changed)
  assert rundir.state_digest(a) != rundir.state_digest({"w": a["w"].reshape(3, 2), "b": a["b"]})


# ----------------------------------------------------------------------------
# Full and unwritable disks.


def test_full_disk_stops_before_saving_with_the_cause(run, monkeypatch):
  usage = shutil.disk_usage(str(run))
  monkeypatch.setattr(rundir.shutil, "disk_usage",
                      lambda path: usage._replace(free=300 * 1024))
  with pytest.raises(errors.UserError, match=r"(?s)Not enough disk space.*"
                     r"last good checkpoint is step 8"):
    runs.train(config_of(num_steps=12, checkpoint_every_steps=2), str(run),
                             dataset=digits())
  assert steps_on_disk(run) == [4, 8]
  assert not (run / ".lock").exists()


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB tmpfs (needs root and mount; skipped elsewhere)."""
  mount = tmp_path / "disk"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here")
  yield mount
  subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_failed_background_save_stops_training_at_once(small_disk, monkeypatch):
  """The disk fills under Orbax's background writer: the next step stops with the cause."""
  monkeypatch.setattr(rundir, "check_space", lambda *args: None)
  with pytest.raises(errors.UserError, match=r"(?s)Saving a checkpoint in .* failed: "
                     r".*No space left on device.*The last good checkpoint is step"):
    runs.train(config_of(num_steps=40, checkpoint_every_steps=2,
                                       keep_checkpoints=50),
                             str(small_disk / "run"), dataset=digits())
  records = [json.loads(line) for line in open(small_disk / "run" / "metrics.jsonl")]
  assert records[-1]["step"] < 40


def test_unwritable_workdir_fails_at_once(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  start = time.time()
  res = cli("experiments.mnist", "--config=experiments/configs/test.py",
            f"--workdir={blocker}/run")
  assert res.returncode == 2
  assert time.time() - start < 10
  assert f"error: Cannot write to the run directory {blocker}/run" in res.stderr
  assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------
# SIGTERM in any phase.


# ----------------------------------------------------------------------------
# Arguments.


@pytest.mark.parametrize("args,flag", [
    (["experiments.sample", "--num_images=0"], "--num_images=0"),
    (["experiments.sample", "--num_images=-3"], "--num_images=-3"),
    (["experiments.evaluate", "--batch_size=0"], "--batch_size=0"),
    (["experiments.evaluate", "--num_images=-5"], "--num_images=-5"),
])
def test_bad_counts_are_a_short_error(args, flag, tmp_path):
  res = cli(*args, f"--workdir={tmp_path}")
  assert res.returncode == 2
  assert res.stderr.startswith(f"error: {flag}:") and len(res.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------
# One writer per workdir.


def test_lock_names_the_live_holder_and_is_released(tmp_path):
  with rundir.WorkdirLock(str(tmp_path)):
    owner = json.loads((tmp_path / ".lock").read_text())
    assert owner["pid"] == os.getpid()
    with pytest.raises(errors.UserError, match=rf"in use by process {os.getpid()}"):
      rundir.WorkdirLock(str(tmp_path)).__enter__()
  assert not (tmp_path / ".lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (tmp_path / ".lock").write_text(json.dumps(
      {"pid": dead.pid, "host": socket.gethostname(), "start_time": "1"}))
  with rundir.WorkdirLock(str(tmp_path)):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_lock_of_a_reused_pid_is_stale(tmp_path):
  """The pid runs, but started at another time than the lock's process: stale."""
  (tmp_path / ".lock").write_text(json.dumps(
      {"pid": os.getppid(), "host": socket.gethostname(), "start_time": "-1"}))
  with rundir.WorkdirLock(str(tmp_path)):
    pass


def test_training_refuses_a_workdir_in_use(tmp_path):
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  try:
    (tmp_path / ".lock").write_text(json.dumps(
        {"pid": holder.pid, "host": socket.gethostname(), "start_time": None,
         "command": "python -m experiments.mnist"}))
    with pytest.raises(errors.UserError, match=rf"in use by process {holder.pid}"):
      runs.train(config_of(num_steps=2), str(tmp_path),
                               dataset=digits())
  finally:
    holder.kill()
  assert not os.path.exists(tmp_path / "checkpoints")
