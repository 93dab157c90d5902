"""Training: optimiser semantics, end-to-end runs, exact resume, errors, the CLI."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import runs
from conftest import ROOT
from dpm_jax import config as config_lib, data as data_lib, metrics, optim, registry
from dpm_jax import errors
from dpm_jax import experiment as experiment_lib, execution
from dpm_jax import diffusion, rundir, step as step_lib, train
from experiments.configs import test as test_config
from runs import digits

SECTIONS = {"train": ("num_steps", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
                      "sample_every_steps", "max_nonfinite_steps", "batch_size"),
            "optimizer": ("learning_rate",), "compute": ("micro_batch_size", "conv")}


def tiny_config(**overrides):
  """The tiny test config with train / optimizer / compute fields overridden by name."""
  config = test_config.get_config()
  for k, v in overrides.items():
    (section,) = [s for s, names in SECTIONS.items() if k in names]
    config[section][k] = v
  return config


def run_cli(args, timeout=300, **kwargs):
  return subprocess.run([sys.executable, "-m"] + args, cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, **kwargs)


def final_params(workdir):
  """(step, the parameters, and their moving average where the run keeps one)."""
  run, raw = rundir.load_run(workdir), rundir.load_run(workdir, params="raw")
  return run.step, jax.tree.leaves((run.params, raw.params))


def deterministic_metrics(workdir):
  """metrics.jsonl without the wall-clock fields."""
  return [{k: v for k, v in r.items() if not k.startswith("perf/")}
          for r in metrics.read_metrics(workdir)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A 10-step run on 96 digits, with a sample grid: copy it before changing it."""
  workdir = tmp_path_factory.mktemp("trained")
  state = runs.train(tiny_config(num_steps=10, sample_every_steps=10),
                                   str(workdir), dataset=digits())
  return workdir, state


@pytest.fixture
def run_copy(trained_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run[0], workdir)
  return workdir


# ----------------------------------------------------------------------------
# The optimiser.


def test_the_moving_average_follows_every_step():
  """ema <- decay * ema + (1 - decay) * params after each update; evaluation uses it."""
  model = diffusion.make_model(test_config.get_config().model)
  params = diffusion.init_params(model, jax.random.key(0))
  tx = optax.sgd(0.1)
  state = step_lib.create_train_state(model, params, tx, ema_decay=0.9)
  grads = jax.tree.map(jnp.ones_like, params)
  one = state.apply_gradients(grads=grads)
  two = one.apply_gradients(grads=grads)
  for p0, p1, p2, ema in zip(*map(jax.tree.leaves, (params, one.params, two.params,
                                                   two.eval_params))):
    np.testing.assert_allclose(ema, 0.9 * (0.9 * p0 + 0.1 * p1) + 0.1 * p2, rtol=1e-6)
  plain = step_lib.create_train_state(model, params, tx)
  assert plain.eval_params is plain.params and not hasattr(plain, "ema_params")


def test_nonfinite_rule_zeroes_only_the_bad_tensor_and_counts_it():
  tx = optax.chain(optim.zero_nonfinite_per_tensor(), optax.sgd(1.0))
  params = {"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(1)}
  state = tx.init(params)
  grads = {"a": jnp.asarray([1.0, jnp.nan, 1.0]), "b": jnp.asarray([0.5, 0.5]),
           "c": jnp.asarray([jnp.inf])}
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["a"], [1, 1, 1])
  np.testing.assert_array_equal(new["c"], [1])
  np.testing.assert_array_equal(new["b"], [0.5, 0.5])
  assert int(state[0].last) == 2 and int(state[0].total) == 2
  updates, state = tx.update({"a": jnp.zeros(3), "b": jnp.zeros(2), "c": jnp.asarray([-jnp.inf])},
                             state, params)
  assert int(state[0].last) == 1 and int(state[0].total) == 3


def test_rmsprop_matches_the_reference_rule():
  config = tiny_config()
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch=1000)
  p = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  state = tx.init(p)
  ms = np.zeros(3)
  w = np.asarray(p["w"], np.float64)
  rng = np.random.default_rng(0)
  for _ in range(5):
    g = rng.normal(size=3)
    ms = 0.9 * ms + 0.1 * g**2
    w = w - 1e-3 * g / np.maximum(np.sqrt(ms), 1e-10)
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p["w"], w, rtol=1e-6)


def test_learning_rate_decays_10x_per_1000_epochs_with_a_floor():
  config = tiny_config()
  schedule = optim.learning_rate_schedule(config.optimizer, steps_per_epoch=10)
  assert float(schedule(0)) == pytest.approx(1e-3)
  assert float(schedule(9)) == pytest.approx(1e-3)          # decays once an epoch
  assert float(schedule(10)) == pytest.approx(1e-3 * 0.1 ** (1 / 1000), rel=1e-6)
  assert float(schedule(10 * 500)) == pytest.approx(1e-3 * 0.1 ** 0.5, rel=1e-4)  # float32 power
  assert float(schedule(10 * 5000)) == pytest.approx(1e-4)  # floor


# ----------------------------------------------------------------------------
# End to end.


@pytest.mark.slow
def test_train_and_evaluate_on_embedded_digits(trained_run):
  workdir, state = trained_run
  assert int(state.step) == 10
  records = metrics.read_metrics(str(workdir))
  assert [r["step"] for r in records] == [5, 10]
  last = records[-1]
  for key in ("train/loss", "train/learning_rate", "train/nonfinite_tensors", "perf/images_per_sec",
              "train/kl", "train/H_start", "train/H_end", "train/L_null", "train/K",
              "eval/loss", "eval/loss_stderr", "eval/nll_bpd",
              "train/norm/network/mlp_conv/layer0/kernel_scale0",
              "train/grad_norm/network/mlp_dense_upper/dense1/bias"):
    assert key in last, key
  assert np.isfinite(last["train/loss"]) and last["eval/loss_stderr"] > 0
  # 4500 digits in batches of 32: 140 steps an epoch; step 10 runs in epoch 0 (the
  # decay itself: test_learning_rate_decays_10x_per_1000_epochs_with_a_floor).
  assert last["train/learning_rate"] == pytest.approx(1e-3, rel=1e-6)
  for name in ("config.json", "data_stats.json", "learning_curves.png", "samples/step_00000010.png"):
    assert os.path.exists(workdir / name), name
  assert os.listdir(workdir / "tensorboard")
  assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [10]
  stats = json.load(open(workdir / "data_stats.json"))
  assert stats["uniform_noise"] == pytest.approx(stats["scale"] / 255)
  run = rundir.load_run(str(workdir))
  assert run.step == 10 and run.config.model.trajectory_length == 50
  for a, b in zip(jax.tree.leaves(run.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_training_lowers_the_bound(tmp_path):
  config = tiny_config(num_steps=150, log_every_steps=50, eval_every_steps=150,
                       checkpoint_every_steps=150, learning_rate=3e-3)
  runs.train(config, str(tmp_path), dataset=digits())
  losses = [r["train/loss"] for r in metrics.read_metrics(str(tmp_path)) if "train/loss" in r]
  assert losses[-1] < losses[0] - 0.2, losses


@pytest.mark.slow
def test_resume_in_process_equals_uninterrupted(tmp_path):
  ds = digits()
  full = tiny_config(num_steps=12, checkpoint_every_steps=4, log_every_steps=3, eval_every_steps=6)
  a = runs.train(full, str(tmp_path / "a"), dataset=ds)
  first = tiny_config(num_steps=5, checkpoint_every_steps=4, log_every_steps=3, eval_every_steps=6)
  runs.train(first, str(tmp_path / "b"), dataset=ds)  # saves 4 and 5
  # Rewind to step 4, as if killed just after that checkpoint.
  shutil.rmtree(tmp_path / "b" / "checkpoints" / "5")
  b = runs.train(full, str(tmp_path / "b"), dataset=ds)
  for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_array_equal(x, y)
  assert deterministic_metrics(tmp_path / "a") == deterministic_metrics(tmp_path / "b")


def _wait_for_step(workdir, step, proc, timeout=240):
  start = time.time()
  while time.time() - start < timeout:
    records = metrics.read_metrics(workdir) if os.path.exists(os.path.join(workdir, "metrics.jsonl")) else []
    if records and records[-1]["step"] >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
    time.sleep(0.05)
  raise AssertionError("training did not reach the step in time")


# Two CPU devices, as this process has: the uninterrupted run is made here, in process.
KILL_ARGS = ["experiments.mnist", "--config=experiments/configs/test.py", "--cpu_devices=2",
             "--config.train.num_steps=60", "--config.train.log_every_steps=2",
             "--config.train.checkpoint_every_steps=7", "--config.train.eval_every_steps=20",
             "--config.train.ema_decay=0.999"]  # the average too resumes bit for bit


@pytest.fixture(scope="module")
def uninterrupted_cli_run(tmp_path_factory):
  from experiments import mnist  # pylint: disable=g-import-not-at-top
  ref = tmp_path_factory.mktemp("uninterrupted")
  code, _, err = call_program(mnist.run, KILL_ARGS + [f"--workdir={ref}"])
  assert code == 0, err[-3000:]
  return ref


@pytest.mark.slow
# SIGTERM mid-run takes SIGINT's path (test_faults.py sends it in process and while the
# first step compiles).
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_kill_and_rerun_reproduces_the_uninterrupted_run(tmp_path, sig, uninterrupted_cli_run):
  args, ref = KILL_ARGS, uninterrupted_cli_run
  killed = tmp_path / "killed"
  proc = subprocess.Popen([sys.executable, "-m"] + args + [f"--workdir={killed}"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for_step(str(killed), 24, proc)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  if sig != signal.SIGKILL:  # SIGINT (Ctrl-C) and SIGTERM: the last step saved, one line
    assert proc.returncode == 128 + sig, err[-3000:]
    name = signal.Signals(sig).name
    assert "Traceback" not in err and "Fatal" not in err
    saved = int(re.search(rf"{name}: saved step (\d+) in ", err).group(1))
    # The step it stopped at, after the one waited for and before the end.
    assert 24 <= saved < 60 and rundir.load_run(str(killed)).step == saved
  else:
    assert proc.returncode == -signal.SIGKILL
  rerun = run_cli(args + [f"--workdir={killed}"])
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "Resumed from step" in rerun.stderr
  step_a, params_a = final_params(str(ref))
  step_b, params_b = final_params(str(killed))
  assert step_a == step_b == 60 and rundir.load_run(str(killed)).params_kind == "ema"
  for x, y in zip(params_a, params_b):
    np.testing.assert_array_equal(x, y)
  assert deterministic_metrics(ref) == deterministic_metrics(killed)


# ----------------------------------------------------------------------------
# Failure modes.


@pytest.mark.slow
def test_nonfinite_losses_stop_training_and_keep_the_last_good_checkpoint(run_copy, monkeypatch):
  good = rundir.load_run(str(run_copy))
  real = data_lib.DataStats.from_dict
  # From here on every batch maps to NaN, as a broken preprocessing would.
  monkeypatch.setattr(data_lib.DataStats, "from_dict",
                      classmethod(lambda cls, d, **kw: real(d).__class__(float("nan"), 0.0, 0.0,
                                                                         **kw)))
  config = tiny_config(num_steps=30, max_nonfinite_steps=4)
  with pytest.raises(errors.UserError, match="non-finite for 4 consecutive step"):
    runs.train(config, str(run_copy), dataset=digits())
  monkeypatch.undo()
  after = rundir.load_run(str(run_copy))
  assert after.step == 10
  for x, y in zip(jax.tree.leaves(good.params), jax.tree.leaves(after.params)):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_corrupt_checkpoint_is_an_error_not_a_restart(run_copy):
  step_dir = run_copy / "checkpoints" / "10" / "state"
  for root, _, files in os.walk(step_dir):
    for name in files:
      if "manifest" in name or name.endswith(".ocdbt") or "d" == os.path.basename(root):
        with open(os.path.join(root, name), "wb") as f:
          f.write(b"garbage")
  with pytest.raises(errors.UserError,
                     match=r"checkpoints/10 is corrupt: its files cannot be read"):
    runs.train(tiny_config(num_steps=20), str(run_copy), dataset=digits())


@pytest.mark.slow
def test_unfinished_step_folder_is_an_error(run_copy):
  os.makedirs(run_copy / "checkpoints" / "15")
  with pytest.raises(errors.UserError, match=r"(?s)checkpoints/15'\] exist but are not "
                                             r"complete Orbax checkpoints"):
    runs.train(tiny_config(num_steps=20), str(run_copy), dataset=digits())


@pytest.mark.slow
def test_changed_model_config_is_an_error(run_copy):
  config = tiny_config(num_steps=20)
  config.model.n_hidden_conv = 5
  with pytest.raises(errors.UserError,
                     match=r"(?s)may not change.*model.n_hidden_conv: checkpoint 4, now 5.*"
                           r"may change:.*train.num_steps: checkpoint 10, now 20"):
    runs.train(config, str(run_copy), dataset=digits())


@pytest.mark.slow
def test_a_field_the_checkpoint_predates_is_named_on_resume(run_copy, caplog):
  """A run saved before a field existed ran with its default; resuming with another value
  is a change from that default, and the log says where the value came from."""
  meta_file = run_copy / "checkpoints" / "10" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  del meta["config"]["eval"]["num_strata"]
  meta["config"]["model"]["future_field"] = 1
  meta_file.write_text(json.dumps(meta))
  config = tiny_config(num_steps=12)
  config.eval.num_strata = 3
  caplog.set_level(logging.INFO)
  assert int(runs.train(config, str(run_copy), dataset=digits()).step) == 12
  assert "lacks field(s) added since; using their defaults: eval.num_strata = 20" in caplog.text
  assert ("Resuming with a changed setting: eval.num_strata: checkpoint 20, now 3 (the "
          "checkpoint predates the field: its default)") in caplog.text
  assert "does not read, kept unused: model.future_field" in caplog.text


@pytest.mark.slow
def test_compute_section_may_change_on_resume(run_copy):
  """How the model runs is not part of what it is: another kernel resumes the run."""
  config = tiny_config(num_steps=12, micro_batch_size=8)
  config.compute.conv = "xla"
  state = runs.train(config, str(run_copy), dataset=digits())
  assert int(state.step) == 12


@pytest.mark.parametrize("field,value,message", [
    ("batch_size", 0, "train.batch_size must be a positive integer"),
    ("num_steps", -1, "train.num_steps must be a non-negative integer"),
    ("learning_rate", 0.0, "optimizer.learning_rate must be a finite number > 0"),
    ("learning_rate", float("inf"), "config fields must be finite numbers: "
     "optimizer.learning_rate=inf"),
    ("learning_rate", float("nan"), "optimizer.learning_rate=nan"),
    ("conv", "fft", "compute.conv must be one of"),
])
def test_bad_train_config(field, value, message):
  config = tiny_config(**{field: value})
  with pytest.raises(errors.UserError, match=message):
    experiment_lib.validate(registry.of_config(config), config)


@pytest.mark.parametrize("field,value,message", [
    ("method", "all", r"eval.method must be one of \('stratified', 'one_t'\)"),
    ("num_strata", 50, r"eval.num_strata must be in 1..49"),
    ("num_images", -1, "eval.num_images must be a non-negative integer"),
])
def test_bad_eval_config(field, value, message):
  config = tiny_config()
  config.eval[field] = value
  with pytest.raises(errors.UserError, match=message):
    experiment_lib.validate(registry.of_config(config), config)


@pytest.mark.slow
def test_image_shape_mismatch(tmp_path):
  config = tiny_config()
  config.model.spatial_width = 32
  with pytest.raises(errors.UserError, match=r"examples are \(28, 28, 1\) but the model expects \(32, 32, 1\)"):
    runs.train(config, str(tmp_path), dataset=digits())


# ----------------------------------------------------------------------------
# The command line.


def call_program(program, argv):
  """(exit code, stdout, stderr) of an entry point's program run in this process."""
  import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = program(argv)
  return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_cli_overrides_and_default_workdir(tmp_path):
  from experiments import mnist  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  code, _, err = call_program(mnist.run, [
      "m", "--config=experiments/configs/test.py", "--config.train.num_steps=4",
      "--config.sample.num_intermediate=3", f"--config.output_dir={out}",
      "--config.suffix=_smoke"])
  assert code == 0, err
  (workdir,) = os.listdir(out)
  assert workdir.startswith("dpm_mnist_smoke-")
  saved = json.load(open(out / workdir / "config.json"))
  assert saved["sample"]["num_intermediate"] == 3 and saved["train"]["num_steps"] == 4


@pytest.mark.slow
def test_cli_errors_are_clear(tmp_path):
  from experiments import cifar10, mnist  # pylint: disable=g-import-not-at-top
  code, _, err = call_program(mnist.run, [
      "m", "--config=test", "--config.train.batch_size=0", f"--workdir={tmp_path / 'a'}"])
  assert code == 2 and "train.batch_size must be a positive integer" in err
  code, _, err = call_program(mnist.run, [
      "m", "--config=test", "--config.data.source=idx", f"--config.data.dir={tmp_path}",
      f"--workdir={tmp_path / 'b'}"])
  assert code == 2 and "No train-images-idx3-ubyte" in err
  start = time.time()
  code, _, err = call_program(cifar10.run, [
      "c", "--config=cifar10", f"--config.data.tfds_data_dir={tmp_path / 'tfds'}",
      f"--workdir={tmp_path / 'c'}"])
  assert code == 2 and "not prepared" in err and "data.source='embedded'" in err
  assert time.time() - start < 60


def test_micro_batch_resolution():
  from dpm_jax import diffusion, heartbeat, kernels  # pylint: disable=g-import-not-at-top
  cpu = diffusion.make_model(test_config.get_config().model, "cpu")
  xla = diffusion.make_model(test_config.get_config().model, "xla")
  assert kernels.runs_cpu_conv(cpu) and not kernels.runs_cpu_conv(xla)
  assert execution.micro_batch_size(-1, 512, 1, cpu) == 64
  assert execution.micro_batch_size(-1, 512, 1, xla) == 0
  assert execution.micro_batch_size(-1, 512, 2, cpu) == 64  # per device: 256
  assert execution.micro_batch_size(-1, 128, 2, cpu) == 0   # per device: 64
  assert execution.micro_batch_size(-1, 32, 1, cpu) == 0
  # A model without convolutions takes its batch whole (the heartbeat's blocked readout).
  assert execution.micro_batch_size(-1, 7996, 1, heartbeat.make_model(heartbeat.model_config())) == 0
  assert execution.micro_batch_size(128, 512, 2, cpu) == 128
  with pytest.raises(errors.UserError, match="must be -1 \\(auto\\), 0 \\(off\\) or divide"):
    execution.micro_batch_size(100, 512, 1, cpu)


def test_concurrent_micro_batch_resolution(monkeypatch):
  monkeypatch.setattr(execution, "usable_cores", lambda: 2)
  # Auto: a device's share of the cores, dividing its micro-batches.
  assert execution.concurrent_micro_batches(0, 64, 512, 1) == 2   # 8 micro-batches, 2 cores
  assert execution.concurrent_micro_batches(0, 64, 512, 2) == 1   # one core per device
  assert execution.concurrent_micro_batches(0, 0, 512, 1) == 1    # no micro-batches
  assert execution.concurrent_micro_batches(0, 64, 192, 1) == 1   # 3 micro-batches
  monkeypatch.setattr(execution, "usable_cores", lambda: 16)
  assert execution.concurrent_micro_batches(0, 64, 512, 1) == 8
  assert execution.concurrent_micro_batches(0, 64, 512, 4) == 2   # 2 micro-batches, 4 cores each
  assert execution.concurrent_micro_batches(0, 64, 1536, 3) == 4  # 8 micro-batches, 5 cores each
  assert execution.concurrent_micro_batches(4, 64, 512, 1) == 4
  with pytest.raises(errors.UserError, match="=3 must be 0 \\(auto\\) or divide the 8"):
    execution.concurrent_micro_batches(3, 64, 512, 1)
  with pytest.raises(errors.UserError, match="=2 needs micro-batches"):
    execution.concurrent_micro_batches(2, 0, 512, 1)


def test_config_changes_on_resume_name_every_field_and_which_may_change():
  # model.conv_impl: a field of earlier versions' saved configs.
  saved = {"seed": 0, "model": {"n_scales": 1, "conv_impl": "matmul"},
           "data": {"dir": "/a", "dataset": "mnist"}, "optimizer": {"name": "rmsprop",
                                                                   "learning_rate": 1e-3},
           "train": {"num_steps": 10}}
  now = {"seed": 0, "model": {"n_scales": 1}, "data": {"dir": "/b", "dataset": "mnist"},
         "optimizer": {"name": "rmsprop", "learning_rate": 1e-4}, "train": {"num_steps": 20},
         "compute": {"conv": "xla"}}
  changes = config_lib.changes(saved, now)
  assert [str(c) for c in changes] == [
      "data.dir: checkpoint '/a', now '/b'", "optimizer.learning_rate: checkpoint 0.001, now 0.0001",
      "train.num_steps: checkpoint 10, now 20"]
  assert all(c.may_change for c in changes) and config_lib.resume_error(changes, "w") is None
  now["data"]["dataset"], now["optimizer"]["name"], now["seed"] = "fashion_mnist", "adam", 1
  error = config_lib.resume_error(config_lib.changes(saved, now), "w")
  fixed, free = error.split("These differ too and may change:")
  for field in ("data.dataset", "optimizer.name", "seed"):
    assert field in fixed
  for field in ("data.dir", "optimizer.learning_rate", "train.num_steps"):
    assert field in free


@pytest.mark.slow
def test_from_python_training_shows_its_progress_and_curves_include_their_step(
    tmp_path, capsys, monkeypatch):
  drawn = []
  real = train.plotting.plot_learning_curves
  monkeypatch.setattr(train.plotting, "plot_learning_curves",
                      lambda records, path, unit: drawn.append(records[-1]["step"])
                      or real(records, path, unit))
  runs.train(tiny_config(num_steps=4, log_every_steps=2, eval_every_steps=2),
                           str(tmp_path), dataset=digits())
  out = capsys.readouterr().out
  for line in ("No checkpoint in", "step 1/4: train bound", "step 2/4 (50.0%",
               "step 4: eval bound"):
    assert line in out, line
  assert drawn == [2, 4]  # each curve is drawn with the record of its own step
