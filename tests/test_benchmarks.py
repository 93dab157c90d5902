"""The benchmark script runs end to end (quick mode) and writes its results."""

import json

import pytest

from benchmarks import run


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
  out = tmp_path / "results.json"
  results = run.main(["--quick", "--models=mnist", "--impls=auto", "--cpu_devices=1", "--no_torch",
                      f"--output={out}"])
  saved = json.loads(out.read_text())
  assert saved["quick"] is True
  (label,) = saved["models"]["mnist"]["jax"]
  train = saved["models"]["mnist"]["jax"][label]["train"]
  assert train["images_per_sec"] > 0 and train["flops_per_step"] > 0
  assert saved["models"]["mnist"]["jax"][label]["sample"]["trajectory_length"] == 50
  assert saved["models"]["mnist"]["torch"] == {"skipped": "--no_torch"}
  assert saved["train_speedup_vs_torch"] is None
  assert "| mnist | JAX" in results["markdown"]
