"""The sampling and evaluation entry points on a trained run (one process each)."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from dpm_jax import train
from experiments.configs import test as test_config
from runs import small_dataset

pytestmark = pytest.mark.slow


def cli(*args, timeout=300):
  return subprocess.run([sys.executable, "-m"] + list(args), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config = test_config.get_config()
  config.model.trajectory_length = 20
  config.train.num_steps = 4
  train.train_and_evaluate(config, str(workdir), dataset=small_dataset())
  return workdir


@pytest.mark.parametrize("mode", ["sample", "inpaint"])
def test_sample_entry_point(run_dir, mode):
  out = run_dir / f"{mode}.png"
  res = cli("experiments.sample", f"--workdir={run_dir}", f"--mode={mode}", "--num_images=4",
            f"--output={out}", "--intermediate")
  assert res.returncode == 0, res.stderr[-3000:]
  assert out.exists() and out.stat().st_size > 500
  with np.load(run_dir / f"{mode}.npz") as arrays:
    assert arrays["samples"].shape == (4, 28, 28, 1)
    assert arrays["states"].shape[1:] == (4, 28, 28, 1)
    if mode != "sample":
      assert arrays["true"].shape == arrays["observed"].shape == (4, 28, 28, 1)
  assert f"{mode}: 4 images from step 4" in res.stdout
  assert "Metadata file does not exist" not in res.stderr


def test_sample_entry_point_default_output_and_device_count(run_dir):
  """The same samples on one CPU device as on one per core (up to float order)."""
  draws = []
  for devices in ("0", "1"):
    res = cli("experiments.sample", f"--workdir={run_dir}", "--num_images=4", "--seed=3",
              f"--cpu_devices={devices}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "samples" / "sample.png").exists()
    draws.append(np.load(run_dir / "samples" / "sample.npz")["samples"])
  np.testing.assert_allclose(draws[0], draws[1], atol=1e-4)
  res = cli("experiments.sample", f"--workdir={run_dir}", "--cpu_devices=-1")
  assert res.returncode != 0 and "cpu_devices=-1: use 0" in res.stderr


@pytest.mark.parametrize("method", ["all_t", "one_t", None])
def test_evaluate_entry_point(run_dir, method):
  extra = ["--parzen_samples=20", "--parzen_validation=50"] if method == "all_t" else []
  chosen = [f"--method={method}"] if method else []  # the default: stratified
  res = cli("experiments.evaluate", f"--workdir={run_dir}", *chosen,
            "--num_images=40", "--num_batches=10", "--batch_size=20", *extra)
  assert res.returncode == 0, res.stderr[-3000:]
  method = method or "stratified"
  report = json.loads((run_dir / f"eval_{method}.json").read_text())
  assert json.loads((run_dir / "eval.json").read_text()) == report  # the latest
  assert report["method"] == method and report["step"] == 4
  assert np.isfinite(report["neg_K_minus_L_null_bits_per_pixel"])
  assert report["neg_K_minus_L_null_stderr"] > 0
  assert report["K_bits"] == pytest.approx(report["L_null_bits"] + report["K_minus_L_null_bits"])
  assert "bits/pixel" in res.stdout and "bits/dim on 8-bit data" in res.stdout
  if method == "all_t":
    assert (run_dir / "kl_per_t.png").exists() and (run_dir / "kl_per_t.npz").exists()
    assert report["parzen"]["num_samples"] == 20
    assert "Parzen window" in res.stdout
    assert "batch 2/2" in res.stdout and "ETA" in res.stdout  # all_t's progress


def test_entry_points_name_a_missing_run(tmp_path):
  for module in ("experiments.sample", "experiments.evaluate"):
    res = cli(module, f"--workdir={tmp_path}")
    assert res.returncode != 0
    assert "No checkpoints in" in res.stderr and "experiments.mnist" in res.stderr


def test_sample_output_without_a_folder_goes_into_the_run_directory(run_dir, tmp_path):
  res = subprocess.run([sys.executable, "-m", "experiments.sample", f"--workdir={run_dir}",
                        "--num_images=2", "--output=bare.png"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert (run_dir / "bare.png").exists() and (run_dir / "bare.npz").exists()
  assert not os.path.exists(os.path.join(ROOT, "bare.png"))
  assert "WARNING" not in res.stderr and not re.search(r"^W\d{4}", res.stderr, re.M)


@pytest.mark.parametrize("module", ["experiments.mnist", "experiments.heartbeat",
                                    "experiments.sample", "experiments.evaluate"])
def test_help_exits_0_and_lists_the_flags(module):
  res = cli(module, "--help")
  assert res.returncode == 0, res.stderr
  assert "--workdir" in res.stdout
  if module in ("experiments.mnist", "experiments.heartbeat"):
    assert "--config" in res.stdout and "--print_config" in res.stdout
  else:
    assert "--num_images" in res.stdout


def test_print_config_gives_every_field_its_value_and_meaning():
  res = cli("experiments.mnist", "--config=test", "--config.train.num_steps=7", "--print_config")
  assert res.returncode == 0, res.stderr
  lines = [l for l in res.stdout.splitlines() if not l.startswith("#")]
  assert any(re.match(r"train\.num_steps = 7 +# ", l) for l in lines)
  assert any(re.match(r"model\.trajectory_length = 50 +# T, the diffusion steps", l) for l in lines)
  described = [l for l in lines if "  # " in l]
  assert len(described) >= 0.9 * len(lines), [l for l in lines if "  # " not in l]


def test_a_mistyped_config_field_is_one_short_error():
  res = cli("experiments.mnist", "--config=test", "--config.train.num_step=5")
  assert res.returncode == 1
  assert "no field 'num_step'" in res.stderr and 'Did you mean "num_steps"' in res.stderr
  assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 2


def test_console_script_works_outside_the_checkout(tmp_path):
  """`dpm-jax`, as installed by pip (the README's install puts it on PATH)."""
  script = shutil.which("dpm-jax") or os.path.join(os.path.dirname(sys.executable), "dpm-jax")
  if not os.path.exists(script):
    pytest.skip("the package is not installed (pip install -e .)")
  for args, expected in ((["--help"], "dpm-jax train mnist"),
                         (["train", "mnist", "--help"], "--print_config"),
                         (["evaluate", "--help"], "--method")):
    res = subprocess.run([script] + args, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert expected in res.stdout


def test_rerunning_a_finished_run_says_it_is_complete(run_dir):
  config = test_config.get_config()
  config.model.trajectory_length = 20
  config.train.num_steps = 4
  res = subprocess.run(
      [sys.executable, "-m", "experiments.mnist", "--config=test",
       "--config.model.trajectory_length=20", "--config.train.num_steps=4",
       f"--workdir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "This run is complete: step 4 of 4" in res.stderr
