"""The entry points as commands: `python -m experiments.<name>` from the checkout,
`dpm-jax` from anywhere, --help, and what the installed package claims.

Every registered experiment runs through every entry point in test_matrix.py
(in process); here the programs run as the processes a user starts.
"""

import contextlib
import functools
import io
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import runs
from conftest import ROOT
from experiments import evaluate as evaluate_program, common, sample as sample_program

pytestmark = pytest.mark.slow


def cli_run(*args, cwd=ROOT, timeout=300):
  return subprocess.run([sys.executable, "-m"] + list(args), cwd=cwd, capture_output=True,
                        text=True, timeout=timeout)


def call(fn, argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = fn(argv)
  return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """Four steps of the tiny MNIST config on the embedded digits, which a command reads again."""
  workdir = tmp_path_factory.mktemp("run")
  config = runs.config("mnist", 'tiny')
  config.train.num_steps = 4
  runs.train(config, str(workdir))
  return workdir


def test_python_m_sample_and_evaluate_from_the_checkout(run_dir):
  out = run_dir / "inpaint.png"
  res = cli_run("experiments.sample", f"--workdir={run_dir}", "--mode=inpaint",
                "--num_images=4", f"--output={out}", "--intermediate")
  assert res.returncode == 0, res.stderr[-3000:]
  assert out.stat().st_size > 500 and "inpaint: 4 examples from step 4" in res.stdout
  with np.load(run_dir / "inpaint.npz") as arrays:
    assert arrays["samples"].shape == (4, 28, 28, 1)
    assert arrays["states"].shape[1:] == arrays["true"].shape == (4, 28, 28, 1)
  assert "WARNING" not in res.stderr and not re.search(r"^W\d{4}", res.stderr, re.M)
  res = cli_run("experiments.evaluate", f"--workdir={run_dir}", "--num_images=40",
                "--batch_size=20")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "bits/dim on 8-bit data" in res.stdout and (run_dir / "eval_stratified_test.json").exists()


def test_samples_do_not_depend_on_the_device_count(run_dir):
  """The same samples on one CPU device as on one per core (up to float order)."""
  draws = []
  for devices in ("0", "1"):
    res = cli_run("experiments.sample", f"--workdir={run_dir}", "--num_images=4", "--seed=3",
                  f"--cpu_devices={devices}", f"--output=devices{devices}.png")
    assert res.returncode == 0, res.stderr[-3000:]
    draws.append(np.load(run_dir / f"devices{devices}.npz")["samples"])
  np.testing.assert_allclose(draws[0], draws[1], atol=1e-4)
  code, _, err = call(sample_program.run, ["s", f"--workdir={run_dir}",
                                                   "--cpu_devices=-1"])
  assert code == 2 and err.startswith("error: --cpu_devices=-1")


def test_a_bare_output_name_goes_into_the_run_directory(run_dir):
  code, _, err = call(sample_program.run, ["s", f"--workdir={run_dir}",
                                                   "--num_images=2", "--output=bare.png"])
  assert code == 0, err
  assert (run_dir / "bare.png").exists() and (run_dir / "bare.npz").exists()
  assert not os.path.exists(os.path.join(ROOT, "bare.png"))


def test_the_entry_points_name_a_missing_run(tmp_path):
  for program in (sample_program.run, evaluate_program.run):
    code, _, err = call(program, ["p", f"--workdir={tmp_path}"])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "No checkpoints in" in err and "experiments.mnist" in err


@pytest.mark.parametrize("program", ["mnist", "heartbeat", "sample", "evaluate"])
def test_help_exits_0_and_lists_the_flags(program):
  import importlib  # pylint: disable=g-import-not-at-top
  code, out, err = call(importlib.import_module(f"experiments.{program}").run,
                        [program, "--help"])
  assert code == 0, err
  assert "--workdir" in out and "flags:" in out
  if program in ("mnist", "heartbeat"):
    assert "--config" in out and "--print_config" in out
  else:
    assert "--num_images" in out


def test_help_as_a_process_is_quick_and_clean():
  res = cli_run("experiments.evaluate", "--help")
  assert res.returncode == 0 and "--method" in res.stdout and not res.stderr


def test_rerunning_a_finished_run_says_it_is_complete(run_dir):
  program = functools.partial(common.training_run, "mnist", "")
  code, out, err = call(program, ["m", "--config=mnist:tiny", "--config.train.num_steps=4",
                                      f"--workdir={run_dir}"])
  assert code == 0, err
  assert "This run is complete: step 4 of 4" in out + err


def test_console_script_works_outside_the_checkout(tmp_path):
  """`dpm-jax`, as installed by pip (the README's install puts it on PATH)."""
  script = shutil.which("dpm-jax") or os.path.join(os.path.dirname(sys.executable), "dpm-jax")
  if not os.path.exists(script):
    pytest.skip("the package is not installed (pip install -e .)")
  for args, expected in ((["--help"], "dpm-jax train mnist"),
                         (["train", "mnist", "--help"], "--print_config"),
                         (["experiments"], "heartbeat"),
                         (["evaluate", "--help"], "--method")):
    res = subprocess.run([script] + args, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert expected in res.stdout


def test_the_installed_package_claims_no_generic_top_level_name(tmp_path):
  """Outside the checkout only dpm_jax is importable; a user's own experiments/ folder
  is theirs, and the installed configs stay dpm_jax.experiments.configs."""
  own = tmp_path / "experiments"
  own.mkdir()
  (own / "__init__.py").write_text("MINE = True\n")
  code = ("import experiments, importlib.util\n"
          "from dpm_jax.experiments.configs import test\n"
          "assert experiments.MINE and test.get_config().experiment == 'mnist'\n"
          "assert importlib.util.find_spec('benchmarks') is None\n"
          "import dpm_jax.benchmarks.run\n")
  res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(os.path.join(ROOT, "pyproject.toml")) as f:
    packages = re.search(r"packages = \[(.*?)\]", f.read(), re.S).group(1)
  assert all(p.strip().strip('"').startswith("dpm_jax") for p in packages.split(",") if p.strip())


def test_evaluate_prints_the_test_bound_training_logged(run_dir):
  """By default the program evaluates as training's periodic bound does (config.eval: the
  same examples, strata and draws), so the same checkpoint gives the same number."""
  from dpm_jax import metrics  # pylint: disable=g-import-not-at-top
  logged = [r for r in metrics.read_metrics(str(run_dir)) if "eval/loss" in r][-1]
  code, out, err = call(evaluate_program.run, ["e", f"--workdir={run_dir}"])
  assert code == 0, err
  printed = float(re.search(r"-\(K - L_null\) = (-?\d+\.\d+)", out).group(1))
  assert logged["step"] == 4 and printed == pytest.approx(logged["eval/loss"], abs=1e-4)
  code, out, err = call(evaluate_program.run, ["e", f"--workdir={run_dir}", "--seed=5",
                                               "--num_images=8"])
  assert code == 0, err
  assert "8 test examples" in out


def _read_only(run_dir, tmp_path):
  """A shell prefix that shows run_dir read-only at tmp_path/ro (a bind mount in a
  user and mount namespace of its own), or skips where the kernel does not allow one."""
  if not shutil.which("unshare") or subprocess.run(
      ["unshare", "-rm", "true"], capture_output=True).returncode:
    pytest.skip("no unprivileged mount namespaces here for a read-only bind mount")
  ro = tmp_path / "ro"
  ro.mkdir()
  return ["unshare", "-rm", "sh", "-c", f'mount --bind -o ro "{run_dir}" "{ro}" && exec "$@"',
          "sh"], ro


def test_a_read_only_run_is_sampled_and_evaluated_elsewhere_or_said_at_once(run_dir, tmp_path):
  prefix, ro = _read_only(run_dir, tmp_path)

  def program(*args):
    return subprocess.run(prefix + [sys.executable, "-m"] + list(args), cwd=ROOT,
                          capture_output=True, text=True, timeout=300)

  probe = program("experiments.evaluate", f"--workdir={ro}", "--num_images=8")
  assert probe.returncode == 2 and "Traceback" not in probe.stderr, probe.stderr[-2000:]
  assert probe.stderr.strip().splitlines()[-1] == (
      f"error: Cannot write to the results' folder {ro} (Read-only file system); write them "
      "elsewhere with --output=FOLDER.")
  assert "-(K - L_null)" not in probe.stdout  # said before the work
  res = program("experiments.sample", f"--workdir={ro}", "--num_images=2")
  assert res.returncode == 2 and "Traceback" not in res.stderr
  assert f"Cannot write to the samples' folder {ro}/samples (Read-only" in res.stderr
  elsewhere = tmp_path / "results"
  res = program("experiments.evaluate", f"--workdir={ro}", "--num_images=8",
                f"--output={elsewhere}")
  assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
  assert (elsewhere / "eval_stratified_test.json").exists()
  res = program("experiments.sample", f"--workdir={ro}", "--num_images=2",
                f"--output={elsewhere}/s.png")
  assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
  assert (elsewhere / "s.png").exists() and (elsewhere / "s.npz").exists()


def _with_saved_config(run_dir, tmp_path, edit):
  """A copy of run_dir whose checkpoint's saved config `edit` changed (a dict, in place)."""
  import json  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "edited"
  shutil.copytree(run_dir, copy)
  meta_file = copy / "checkpoints" / "4" / "meta" / "metadata"
  meta = json.loads(meta_file.read_text())
  edit(meta["config"])
  meta_file.write_text(json.dumps(meta))
  return copy


@pytest.mark.parametrize("edit,program,message", [
    (lambda c: c["eval"].update(num_strata=None), evaluate_program,
     "eval.num_strata must be a positive integer"),
    (lambda c: c["sample"].update(mask="bottom_half"), sample_program, "sample.mask must be one of"),
])
def test_a_saved_config_is_checked_like_a_config_file(run_dir, tmp_path, edit, program, message):
  edited = _with_saved_config(run_dir, tmp_path, edit)
  code, _, err = call(program.run, ["p", f"--workdir={edited}", "--num_images=4"])
  assert code == 2 and "Traceback" not in err, err
  (line,) = err.strip().splitlines()
  assert line.startswith(f"error: The config saved in {edited}/checkpoints/4 is not valid: "
                         f"{message}"), line


def test_saved_fields_unknown_or_missing_are_named(run_dir, tmp_path, caplog):
  def edit(config):
    config["model"]["future_field"] = 3
    del config["eval"]["num_strata"]  # saved by a version before the field

  edited = _with_saved_config(run_dir, tmp_path, edit)
  code, out, err = call(evaluate_program.run, ["e", f"--workdir={edited}"])
  assert code == 0, err
  assert "20 strata" in out  # the default, where the run's own was 5
  logged = caplog.text
  assert "does not read, kept unused: model.future_field" in logged
  assert "lacks field(s) added since; using their defaults: eval.num_strata = 20" in logged


def test_a_setting_changed_on_a_finished_run_holds_to_its_final_report(tmp_path):
  """Rerunning a finished Table 1 run trains nothing; its final report reads the
  command's config, not the last checkpoint's."""
  from experiments import heartbeat  # pylint: disable=g-import-not-at-top
  args = ["h", "--config=experiments/configs/heartbeat.py:tiny", f"--workdir={tmp_path}"]
  code, _, err = call(heartbeat.run, args)
  assert code == 0, err
  code, _, err = call(heartbeat.run, args + ["--config.final_eval.num_examples=16"])
  assert code == 0, err
  import json  # pylint: disable=g-import-not-at-top
  assert json.loads((tmp_path / "eval.json").read_text())["num_images"] == 16


def test_evaluation_runs_at_the_run_s_precision_and_records_it(run_dir, tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  edited = _with_saved_config(run_dir, tmp_path,
                              lambda c: c["compute"].update(matmul_precision="default"))
  for workdir, precision in ((run_dir, "highest"), (edited, "default")):
    code, _, err = call(evaluate_program.run, ["e", f"--workdir={workdir}", "--num_images=8",
                                               f"--output={tmp_path / precision}"])
    assert code == 0, err
    result = json.loads((tmp_path / precision / "eval_stratified_test.json").read_text())
    assert result["matmul_precision"] == precision


def test_a_run_with_a_moving_average_is_evaluated_and_sampled_with_it(tmp_path):
  import json  # pylint: disable=g-import-not-at-top
  from dpm_jax import errors  # pylint: disable=g-import-not-at-top
  config = runs.config("mnist", "tiny")
  config.train.update(num_steps=4, ema_decay=0.5)
  runs.train(config, str(tmp_path))
  from dpm_jax import metrics  # pylint: disable=g-import-not-at-top
  assert [r["eval/ema_params"] for r in metrics.read_metrics(str(tmp_path))
          if "eval/loss" in r] == [True]
  printed = {}
  for params in ("ema", "raw"):
    code, out, err = call(evaluate_program.run, ["e", f"--workdir={tmp_path}", "--num_images=8",
                                                 f"--params={params}",
                                                 f"--output={tmp_path / params}"])
    assert code == 0, err
    assert f"({params} parameters)" in out
    name = "eval_stratified_test.json" if params == "ema" else "eval_stratified_raw_test.json"
    result = json.loads((tmp_path / params / name).read_text())
    assert result["params"] == params
    printed[params] = result["neg_K_minus_L_null_bits_per_pixel"]
  assert printed["ema"] != printed["raw"]
  for params in ("ema", "raw"):  # into the run directory: one file each, none replaced
    assert call(evaluate_program.run, ["e", f"--workdir={tmp_path}", "--num_images=8",
                                       f"--params={params}"])[0] == 0
    assert call(sample_program.run, ["s", f"--workdir={tmp_path}", "--num_images=2",
                                     f"--params={params}"])[0] == 0
  assert {p.name for p in tmp_path.glob("eval_*")} == {"eval_stratified_test.json",
                                                       "eval_stratified_raw_test.json"}
  assert {p.name for p in (tmp_path / "samples").glob("sample-*.png")} == {
      "sample-step4-seed0.png", "sample-step4-seed0-raw.png"}
  code, out, err = call(sample_program.run, ["s", f"--workdir={tmp_path}", "--num_images=2",
                                             f"--output={tmp_path}/s.png"])
  assert code == 0 and "(ema parameters)" in out, err
  with np.load(tmp_path / "s.npz") as arrays:
    assert bool(arrays["ema_params"])
  config.train.update(num_steps=6, ema_decay=0.0)
  with pytest.raises(errors.UserError, match=r"train.ema_decay: checkpoint 0.5, now 0.0: the "
                                             r"average starts at a run's first step"):
    runs.train(config, str(tmp_path))


def test_an_output_folder_holds_the_default_name(run_dir, tmp_path):
  for output in (f"{tmp_path}/new/", f"{tmp_path}"):  # a folder to make, an existing one
    code, out, err = call(sample_program.run, ["s", f"--workdir={run_dir}", "--num_images=2",
                                               f"--output={output}"])
    assert code == 0, err
    assert os.path.exists(os.path.join(output, "sample-step4-seed0.png"))
