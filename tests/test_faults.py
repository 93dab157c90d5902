"""Faults off the main path, each fixed by its whole kind: the data a run is judged on,
resuming with other settings, domains of fields and flags, NaN in outputs, names of
metrics, damaged data files, naming a config, stop signals.

(Sampling a Table 1 run and evaluations that would overwrite the final report are
in test_matrix.py; the names the installed package claims in test_entry_points.py.)
"""

import contextlib
import gzip
import importlib
import io
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import runs
from conftest import ROOT
from dpm_jax import data, evaluate as evaluate_lib, metrics, outputs
from dpm_jax import errors
from dpm_jax import experiment as experiment_lib
from dpm_jax import registry, rundir, train
from experiments import cli, evaluate as evaluate_program, mnist as mnist_program
from experiments import sample as sample_program

pytestmark = pytest.mark.slow


def call(fn, argv):
  """(exit code, stdout, stderr) of an entry point run in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = fn(argv)
  return code, out.getvalue(), err.getvalue()


def one_line_error(code, err, *fragments):
  assert code == 2, err
  assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
  for fragment in fragments:
    assert fragment in err, (fragment, err)


def tiny(**train_fields):
  """The mnist experiment's tiny config (the programs the other tests compile, too)."""
  config = runs.config("mnist", 'tiny')
  config.train.update(train_fields)
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """Four steps on the embedded digits, checkpoints at 2 and 4: copy it before changing it."""
  workdir = tmp_path_factory.mktemp("trained")
  runs.train(tiny(num_steps=4, checkpoint_every_steps=2, eval_every_steps=4),
                           str(workdir))
  return workdir


@pytest.fixture
def run_copy(trained, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(trained, workdir)
  return workdir


def steps_on_disk(workdir):
  return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


# ----------------------------------------------------------------------------
# A run is sampled and evaluated on the data it was trained on, or says it cannot.


def test_a_run_on_python_arrays_is_never_evaluated_on_other_data(tmp_path):
  digits = data.load_embedded()  # as arrays from Python: the programs of the other tests
  dataset = data.from_arrays(digits.train, digits.test, name="blobs")
  runs.train(tiny(num_steps=2), str(tmp_path), dataset=dataset)
  for program, extra in ((evaluate_program.run, []),
                         (sample_program.run, ["--mode=inpaint"])):
    code, _, err = call(program, ["p", f"--workdir={tmp_path}", "--num_images=4", *extra])
    one_line_error(code, err, "trained on arrays given from Python", "'blobs'")
  assert not (tmp_path / "eval_stratified_test.json").exists()
  code, _, err = call(sample_program.run, ["p", f"--workdir={tmp_path}",
                                                   "--num_images=2"])
  assert code == 0, err  # plain samples need no data
  run, experiment = registry.open_run(str(tmp_path))  # from Python, with the same arrays
  task = experiment_lib.build(experiment, run.config, dataset, run.stats)
  bound = evaluate_lib.bound_stratified(task, run.params, task.data.test[:32], jax.random.key(0),
                                        num_strata=5, batch_size=32)
  assert np.isfinite(bound["K_bits"])


def write_idx(path, images):
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">IIII", 0x803, len(images), 28, 28) + images.tobytes())


def test_changed_data_files_are_not_taken_for_the_run_s_own(tmp_path):
  digits = data.load_embedded()  # the other tests' data (and programs), as IDX files
  folder = tmp_path / "idx"
  folder.mkdir()
  write_idx(folder / "train-images-idx3-ubyte.gz", digits.train[..., 0])
  write_idx(folder / "t10k-images-idx3-ubyte.gz", digits.test[..., 0])
  config = tiny(num_steps=2)
  config.data.update(source="idx", dir=str(folder))
  workdir = tmp_path / "run"
  runs.train(config, str(workdir))
  code, _, err = call(evaluate_program.run, ["e", f"--workdir={workdir}",
                                                     "--num_images=32", "--batch_size=32"])
  assert code == 0, err
  write_idx(folder / "t10k-images-idx3-ubyte.gz", digits.test[::-1, :, :, 0])  # reordered
  code, _, err = call(evaluate_program.run, ["e", f"--workdir={workdir}"])
  one_line_error(code, err, "are not the examples the run", "another fingerprint")
  config.train.num_steps = 3
  with pytest.raises(errors.UserError, match="trained on other data"):
    runs.train(config, str(workdir))


# ----------------------------------------------------------------------------
# Resuming with other settings: every differing field named; "corrupt" only for bad bytes.


@pytest.mark.parametrize("resume_verified", [False, True])
def test_resuming_with_another_optimizer_names_every_field_and_moves_nothing(run_copy,
                                                                              resume_verified):
  argv = ["m", "--config=test", "--config.optimizer.name=adam",
          "--config.train.num_steps=6", f"--workdir={run_copy}"]
  code, _, err = call(mnist_program.run, argv + (["--resume_verified"] * resume_verified))
  one_line_error(code, err, "optimizer.name: checkpoint 'rmsprop', now 'adam'", "may not change",
                 "train.num_steps: checkpoint 4, now 6", "may change")
  assert "corrupt" not in err
  assert steps_on_disk(run_copy) == [2, 4] and not (run_copy / "checkpoints_corrupt").exists()


def test_a_checkpoint_that_verifies_but_does_not_fit_is_not_called_corrupt(run_copy):
  manager = rundir.make_manager(str(run_copy))
  state, _ = rundir.restore(manager, 4)
  other = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2,) + np.shape(x), np.asarray(x).dtype),
                       state)
  with pytest.raises(errors.UserError, match="verifies, but") as caught:
    rundir.restore(manager, 4, other)
  assert "corrupt" not in str(caught.value)
  with pytest.raises(errors.UserError):
    rundir.restore_newest_verified(manager, lambda step: rundir.restore(manager, step, other))
  assert steps_on_disk(run_copy) == [2, 4] and not (run_copy / "checkpoints_corrupt").exists()
  rundir.close_quietly(manager)


# ----------------------------------------------------------------------------
# Domains of fields and flags, and the relations between them.


@pytest.mark.parametrize("override,message", [
    ("optimizer.learning_rate=1e-5", "below optimizer.min_learning_rate=0.0001"),
    ("train.batch_size=0", "train.batch_size must be a positive integer"),
    ("train.log_every_steps=0", "train.log_every_steps must be a positive integer"),
    ("train.eval_every_steps=-1", "train.eval_every_steps must be a non-negative integer"),
    ("eval.num_strata=50", "eval.num_strata must be in 1..49"),
    ("eval.num_batches=1", "eval.num_batches must be an integer >= 2"),
    ("sample.denoise_sigma=0.0", "sample.denoise_sigma must be a finite number > 0"),
    ("optimizer.rmsprop_decay=1.0", "optimizer.rmsprop_decay must be a number in [0, 1)"),
    ("compute.micro_batch_size=-2", "compute.micro_batch_size must be an integer >= -1"),
    ("compute.concurrent_micro_batches=-1",
     "compute.concurrent_micro_batches must be a non-negative integer"),
    # Relations to the batch and the devices, checked before the workdir is made.
    ("compute.micro_batch_size=5", "micro_batch_size=5 must be -1 (auto), 0 (off) or divide the "
     "per-device batch 16"),
    ("compute.concurrent_micro_batches=2", "concurrent_micro_batches=2 needs micro-batches"),
    ("model.dropout_rate=1.0", "model.dropout_rate must be a number in [0, 1)"),
    ("data.dequantization=half", "data.dequantization must be one of ('bin', 'reference')"),
    ("experiment=mnst", "No experiment 'mnst'; did you mean 'mnist'?"),
    ("optimizer.learning_rate=nan", "config fields must be finite numbers"),
])
def test_config_values_outside_their_domain_are_one_line_before_anything_runs(
    override, message, tmp_path):
  code, _, err = call(mnist_program.run, [
      "m", "--config=test", f"--config.{override}",
      f"--workdir={tmp_path / 'run'}"])
  one_line_error(code, err, message)
  assert not (tmp_path / "run").exists()


def test_micro_batches_are_checked_against_the_plan_before_anything_is_written(tmp_path):
  # Batch 32 on two devices: 2 micro-batches of 8 each; on one device (--cpu_devices=1), 4.
  code, _, err = call(mnist_program.run, [
      "m", "--config=test", "--config.compute.micro_batch_size=8",
      "--config.compute.concurrent_micro_batches=4", f"--workdir={tmp_path / 'run'}"])
  one_line_error(code, err, "concurrent_micro_batches=4 must be 0 (auto) or divide the 2 "
                 "micro-batches", "16 examples per device")
  assert not (tmp_path / "run").exists()


def test_boundary_values_work_as_their_limit(tmp_path):
  """0 turns a periodic action off (checkpoints: only at the end), a learning rate at its
  floor stays there, eval.num_images=0 means every test example."""
  config = tiny(num_steps=3, log_every_steps=1, eval_every_steps=0, sample_every_steps=0,
                checkpoint_every_steps=0)
  config.optimizer.update(learning_rate=1e-5, min_learning_rate=1e-5)
  config.eval.num_images = 0
  runs.train(config, str(tmp_path), dataset=data.from_arrays(
      data.load_embedded().train[:200]))
  records = metrics.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3]
  assert not any(k.startswith("eval/") for r in records for k in r)
  assert [r["train/learning_rate"] for r in records] == [pytest.approx(1e-5)] * 3
  assert steps_on_disk(tmp_path) == [3] and not (tmp_path / "samples").exists()


@pytest.mark.parametrize("program,args,message", [
    ("sample", ["--num_images=0"], "--num_images=0"),
    ("sample", ["--mode=denoise", "--denoise_sigma=0"], "--denoise_sigma must be > 0"),
    ("sample", ["--mode=superres", "--superres_noise=0"], "--superres_noise must be > 0"),
    ("sample", ["--mode=superres", "--superres_factor=3"], "superres_factor=3 does not divide the 28 x 28 image"),
    ("sample", ["--mode=inpaint", "--num_images=501"], "exceeds the run's 500 test examples"),
    ("sample", ["--mode=heal"], "samples in the mode(s) sample, inpaint, denoise, superres"),
    ("sample", ["--step=3"], "No checkpoint at step 3"),
    ("sample", ["--seed=-1"], "--seed=-1"),
    ("evaluate", ["--batch_size=0"], "--batch_size=0"),
    ("evaluate", ["--num_strata=50"], "exceeds the run's 49 time steps"),
    ("evaluate", ["--num_batches=1", "--method=one_t"], "--num_batches=1"),
    ("evaluate", ["--method=every_t"], "--method"),
    ("evaluate", ["--parzen_samples=4", "--parzen_validation=4501"], "exceeds the run's 4500"),
])
def test_flag_values_outside_their_domain_are_one_line_and_write_nothing(trained, program, args,
                                                                          message):
  before = sorted(str(p) for p in trained.rglob("*"))
  module = sample_program if program == "sample" else evaluate_program
  code, _, err = call(module.run, [program, f"--workdir={trained}", *args])
  one_line_error(code, err, message)
  assert sorted(str(p) for p in trained.rglob("*")) == before


# ----------------------------------------------------------------------------
# Nothing writes NaN or Inf and exits 0; metrics are named for what they are.


def edit_meta(workdir, step, **stats):
  path = workdir / "checkpoints" / str(step) / "meta" / "metadata"
  meta = json.loads(path.read_text())
  meta["data_stats"].update(stats)
  path.write_text(json.dumps(meta))


def test_samples_that_come_out_nan_are_not_written(run_copy):
  edit_meta(run_copy, 4, scale=0.0)  # pixels = (x - shift) / scale: infinite
  for mode in ("sample", "denoise"):
    code, _, err = call(sample_program.run, ["s", f"--workdir={run_copy}",
                                                     f"--mode={mode}", "--num_images=2"])
    one_line_error(code, err, "NaN or Inf", "nothing was written")
  assert not (run_copy / "samples").exists()


def test_a_bound_that_comes_out_nan_is_not_written(run_copy):
  edit_meta(run_copy, 4, scale=float("nan"))
  code, _, err = call(evaluate_program.run, ["e", f"--workdir={run_copy}",
                                                     "--num_images=8", "--batch_size=8"])
  one_line_error(code, err, "is not finite", "Nothing was written")
  assert not list(run_copy.glob("eval_*"))


def test_undefined_values_are_null_in_json_and_metrics(tmp_path):
  outputs.write_json(str(tmp_path / "r.json"), {"stderr": float("nan"), "k": np.float32(2.0),
                                                "inf": [float("inf")]})
  assert json.loads((tmp_path / "r.json").read_text()) == {"stderr": None, "k": 2.0,
                                                           "inf": [None]}
  with metrics.MetricWriter(str(tmp_path), 0) as writer:
    writer.write(1, {"train/loss": float("nan"), "eval/loss_stderr": None, "train/n": 3})
  assert metrics.read_metrics(str(tmp_path)) == [
      {"step": 1, "train/loss": None, "eval/loss_stderr": None, "train/n": 3}]
  with pytest.raises(errors.UserError, match="'x'"):
    outputs.save_npz(str(tmp_path / "a.npz"), x=np.asarray([1.0, np.nan]))
  assert not (tmp_path / "a.npz").exists()


def test_reference_dequantization_reports_a_density_not_an_nll_bound(tmp_path):
  config = tiny(num_steps=2, eval_every_steps=2)
  config.data.dequantization = "reference"
  runs.train(config, str(tmp_path))
  last = metrics.read_metrics(str(tmp_path))[-1]
  assert "eval/density_bpd" in last and not any("nll" in k for k in last)
  code, out, err = call(evaluate_program.run, ["e", f"--workdir={tmp_path}",
                                                       "--num_images=8", "--batch_size=8"])
  assert code == 0, err
  report = json.loads((tmp_path / "eval_stratified_test.json").read_text())
  assert "density_bpd" in report and "nll_bpd" not in report
  assert "NLL bound" not in out and "not a bound on 8-bit data" in out


# ----------------------------------------------------------------------------
# Damaged data files: the one-line data error naming the file.


def test_a_damaged_deflate_stream_is_the_one_line_data_error(tmp_path):
  folder = tmp_path / "idx"
  folder.mkdir()
  images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), np.uint8)
  write_idx(folder / "train-images-idx3-ubyte.gz", images)
  write_idx(folder / "t10k-images-idx3-ubyte.gz", images[:32])
  path = folder / "train-images-idx3-ubyte.gz"
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF  # one byte inside the deflate stream
  path.write_bytes(bytes(raw))
  with pytest.raises(errors.UserError, match=re.escape(str(path))):
    data.load_idx(str(folder))
  code, _, err = call(mnist_program.run, [
      "m", "--config=test", "--config.data.source=idx", f"--config.data.dir={folder}",
      f"--workdir={tmp_path / 'run'}"])
  one_line_error(code, err, str(path), "damaged")


def test_a_damaged_embedded_file_is_the_one_line_data_error(tmp_path, monkeypatch):
  broken = tmp_path / "mnist_5k.npz"
  raw = bytearray(open(data.EMBEDDED_FILE, "rb").read())
  broken.write_bytes(bytes(raw[:len(raw) // 2]))
  monkeypatch.setattr(data, "EMBEDDED_FILE", str(broken))
  with pytest.raises(errors.UserError, match="cannot be read"):
    data.load_embedded()


def test_a_damaged_tfds_record_is_the_one_line_data_error():
  class Source:
    def __len__(self):
      return 3

    def __getitem__(self, i):
      if i == 2:
        raise ValueError("DATA_LOSS: corrupted record")
      return {"image": np.zeros((28, 28, 1), np.uint8)}
  with pytest.raises(errors.UserError, match="'mnist'.*damaged"):
    data._read_all(Source(), "mnist")  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# Naming a config or a field, every way: one line with the closest name.


@pytest.mark.parametrize("args,message", [
    (["--config=experiments/configs/mnst.py"], "did you mean 'mnist'"),
    (["--config=nosuch"], "Shipped configs: " + ", ".join(sorted(
        p.stem for p in (pathlib.Path(ROOT) / "experiments" / "configs").glob("*.py") if p.stem != "__init__"))),
    (["--config=test:huge"], "has no variant 'huge'"),
    (["--config=test", "--config.train.num_step=5"], "did you mean 'num_steps'"),
    (["--config", "mnst"], "did you mean 'mnist'"),
])
def test_a_config_or_field_that_does_not_exist_is_one_line(args, message, tmp_path):
  code, _, err = call(cli.main, ["train", "mnist", *args, f"--workdir={tmp_path}"])
  one_line_error(code, err, message)


@pytest.mark.parametrize("program,config,named", [
    ("swiss_roll", "mnist:tiny", "mnist"),
    ("heartbeat", "experiments/configs/swiss_roll.py", "swiss_roll")])
def test_another_experiment_s_config_is_one_line_naming_its_program(program, config, named,
                                                                    tmp_path):
  """A program trains its own experiment: another's config names the program to use."""
  workdir = tmp_path / "run"
  module = importlib.import_module(f"experiments.{program}")
  for fn, argv in ((cli.main, ["train", program]), (module.run, [f"experiments.{program}"])):
    code, _, err = call(fn, argv + [f"--config={config}", f"--workdir={workdir}"])
    one_line_error(code, err, f"a config of the {named} experiment", f"dpm-jax train {named}")
  assert not workdir.exists()


def test_every_way_of_naming_a_config_works(tmp_path):
  flagfile = tmp_path / "flags.txt"
  flagfile.write_text("--config=test\n--config.train.num_steps=7\n")
  for argv in (["--config", "test", "--config.train.num_steps=7"],
               ["--config=test.py", "--config.train.num_steps=7"],
               ["--config=experiments/configs/test.py", "--config.train.num_steps=7"],
               ["--config=mnist:tiny", "--config.train.num_steps=7"],
               [f"--flagfile={flagfile}"]):
    code, out, err = call(cli.main, ["train", "mnist", *argv, "--print_config"])
    assert code == 0, (argv, err)
    assert re.search(r"^train\.num_steps = 7 ", out, re.M), argv


def test_a_mistyped_field_through_the_console_script_is_one_line(tmp_path):
  script = shutil.which("dpm-jax") or os.path.join(os.path.dirname(sys.executable), "dpm-jax")
  if not os.path.exists(script):
    pytest.skip("the package is not installed (pip install -e .)")
  res = subprocess.run([script, "train", "mnist", "--config.train.num_step=5",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, timeout=120)
  one_line_error(res.returncode, res.stderr, "did you mean 'num_steps'")


# ----------------------------------------------------------------------------
# Stop signals: between steps, evaluation batches and sampling chunks; at once
# before the first step; never JAX work in a daemon thread.


def stop_during(monkeypatch, module, name, signum=signal.SIGTERM):
  """Makes the first call of module.name send `signum` to this process first."""
  real, sent = getattr(module, name), []

  def wrapper(*args, **kwargs):
    if not sent:
      sent.append(True)
      os.kill(os.getpid(), signum)
      time.sleep(0.1)  # the handler runs
    return real(*args, **kwargs)
  monkeypatch.setattr(module, name, wrapper)


@pytest.mark.parametrize("action", ["eval", "samples"])
def test_a_stop_during_an_action_saves_the_step_and_the_rerun_finishes_it(tmp_path, monkeypatch,
                                                                          action):
  config = tiny(num_steps=4, log_every_steps=1, eval_every_steps=2, checkpoint_every_steps=0,
                sample_every_steps=2, sample_num_images=2)
  ref = runs.train(config, str(tmp_path / "ref"))
  calls = {"eval": (train, "evaluate_test"), "samples": (train, "write_samples")}[action]
  stop_during(monkeypatch, *calls)
  with pytest.raises(errors.Stopped, match=r"SIGTERM: saved step 2") as caught:
    runs.train(config, str(tmp_path / "run"))
  assert caught.value.code == 143
  monkeypatch.undo()
  assert steps_on_disk(tmp_path / "run") == [2]
  assert (tmp_path / "run" / train.PENDING_FILE).exists()
  again = runs.train(config, str(tmp_path / "run"))
  assert not (tmp_path / "run" / train.PENDING_FILE).exists()
  for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(again.params)):
    np.testing.assert_array_equal(a, b)
  strip = lambda path: [{k: v for k, v in r.items() if not k.startswith("perf/")}
                        for r in metrics.read_metrics(str(path))]
  assert strip(tmp_path / "ref") == strip(tmp_path / "run")
  assert sorted(os.listdir(tmp_path / "run" / "samples")) == sorted(
      os.listdir(tmp_path / "ref" / "samples"))


def test_the_evaluations_and_the_sampler_stop_between_batches_and_chunks(trained):
  from dpm_jax import sampling  # pylint: disable=g-import-not-at-top
  run, experiment = registry.open_run(str(trained))
  task = experiment_lib.build(experiment, run.config, registry.run_data(run, experiment), run.stats)
  polls = []
  stop_after = lambda n: lambda: polls.append(1) or len(polls) > n
  for bound in (evaluate_lib.bound_all_t, evaluate_lib.bound_stratified, evaluate_lib.bound_one_t):
    polls.clear()
    with pytest.raises(errors.Stopped):
      bound(task, run.params, task.data.test[:32], jax.random.key(0), batch_size=8,
            should_stop=stop_after(2))
    assert len(polls) == 3
  polls.clear()
  sampler = sampling.make_sampler(task.model, num_images=2, steps_per_call=5)
  with pytest.raises(errors.Stopped):
    sampler(run.params, jax.random.key(0), should_stop=stop_after(2))
  assert len(polls) == 3
  a = sampler(run.params, jax.random.key(0))
  b = sampling.make_sampler(task.model, num_images=2, steps_per_call=100)(run.params,
                                                                         jax.random.key(0))
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)  # chunks change nothing


def start_training(tmp_path, *extra, env=None):
  return subprocess.Popen(
      [sys.executable, "-m", "experiments.mnist", "--config=mnist", f"--workdir={tmp_path}",
       "--config.train.num_steps=3", *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True,
      env=env)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_while_the_first_step_compiles_exits_at_once(tmp_path, signum):
  # Without the compilation cache the reference model's first step compiles for seconds.
  env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false")
  proc = start_training(tmp_path, env=env)
  for line in proc.stderr:
    if "Training mnist" in line:  # logged just before the first step compiles
      break
  time.sleep(0.5)
  sent = time.time()
  proc.send_signal(signum)
  err = proc.stderr.read()
  proc.wait(timeout=60)
  assert time.time() - sent < 5, err
  assert proc.returncode == 128 + signum, err
  name = signal.Signals(signum).name
  assert err.strip().splitlines()[-1] == f"{name}: stopped training (nothing to save)."
  assert "Traceback" not in err and "Fatal" not in err
  assert not (tmp_path / ".lock").exists()
  assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
