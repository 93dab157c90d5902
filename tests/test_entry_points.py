"""The sampling and evaluation entry points on a trained run (one process each)."""

import json
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


@pytest.mark.parametrize("method", ["all_t", "one_t"])
def test_evaluate_entry_point(run_dir, method):
  extra = ["--parzen_samples=20", "--parzen_validation=50"] if method == "all_t" else []
  res = cli("experiments.evaluate", f"--workdir={run_dir}", f"--method={method}",
            "--num_images=40", "--num_batches=10", "--batch_size=20", *extra)
  assert res.returncode == 0, res.stderr[-3000:]
  report = json.loads((run_dir / "eval.json").read_text())
  assert report["method"] == method and report["step"] == 4
  assert np.isfinite(report["neg_K_minus_L_null_bits_per_pixel"])
  assert report["neg_K_minus_L_null_stderr"] > 0
  assert report["K_bits"] == pytest.approx(report["L_null_bits"] + report["K_minus_L_null_bits"])
  assert "bits/pixel" in res.stdout and "bits/dim on 8-bit data" in res.stdout
  if method == "all_t":
    assert (run_dir / "kl_per_t.png").exists() and (run_dir / "kl_per_t.npz").exists()
    assert report["parzen"]["num_samples"] == 20
    assert "Parzen window" in res.stdout


def test_entry_points_name_a_missing_run(tmp_path):
  for module in ("experiments.sample", "experiments.evaluate"):
    res = cli(module, f"--workdir={tmp_path}")
    assert res.returncode != 0
    assert "No checkpoints in" in res.stderr and "experiments.mnist" in res.stderr
