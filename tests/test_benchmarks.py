"""The benchmark scripts run end to end (quick mode) and write their results."""

import json
import os

import jax
import pytest

from benchmarks import conv_layer, profile, run, scaling
from dpm_jax import parallel


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
  out = tmp_path / "results.json"
  results = run.main(["--quick", "--models=mnist", "--impls=auto", "--no_torch",
                      f"--output={out}"])
  saved = json.loads(out.read_text())
  assert saved["quick"] is True
  mnist = saved["models"]["mnist"]
  assert sorted(j["devices"] for j in mnist["jax"].values()) == [1, 2]
  for j in mnist["jax"].values():
    assert j["train"]["images_per_sec"] > 0 and j["train"]["flops_per_step"] > 0
    assert j["sample"]["trajectory_length"] == 50 and j["sample"]["achieved_gflops"] > 0
  # The default configuration is one of the two, chosen as the training loop chooses.
  default = mnist["default"]
  assert default["train_devices"] in (1, 2) and default["sample_devices"] == 2
  chosen = next(j for j in mnist["jax"].values() if j["devices"] == default["train_devices"])
  assert default["train"] == chosen["train"]
  one = next(j for j in mnist["jax"].values() if j["devices"] == 1)
  assert saved["default_over_one_device_train"] == pytest.approx(
      chosen["train"]["images_per_sec"] / one["train"]["images_per_sec"])
  assert 0 < saved["one_device_peak_fraction"] < 10
  best = max(j["train"]["images_per_sec"] for j in mnist["jax"].values())
  assert saved["default_over_best_train"] == pytest.approx(
      chosen["train"]["images_per_sec"] / best) and saved["default_over_best_train"] <= 1
  assert mnist["torch"]["eager"] == mnist["torch"]["compile"] == {"skipped": "--no_torch"}
  assert saved["train_speedup_vs_torch"] is None and saved["sample_speedup_vs_torch_compile"] is None
  assert "| mnist | JAX" in results["markdown"] and "default configuration" in results["markdown"]


@pytest.mark.slow
def test_one_at_a_time_times_the_same_step_without_concurrent_micro_batches():
  config = run.experiment_config("mnist", True, "auto", 16)
  config.model.spatial_width = 8  # the benchmark's MNIST shapes, smaller
  config.compute.micro_batch_size, config.compute.concurrent_micro_batches = 4, 2
  par = parallel.DataParallel(jax.devices()[:1])
  side_by_side = run.bench_jax_train(config, 1, par)
  alone = run.one_at_a_time(config, 1, par)
  assert side_by_side["concurrent_micro_batches"] == 2 and alone["concurrent_micro_batches"] == 1
  assert alone["micro_batch_size"] == side_by_side["micro_batch_size"] == 4
  assert alone["flops_per_step"] == side_by_side["flops_per_step"]
  assert config.compute.concurrent_micro_batches == 2  # the caller's config is left as it was


@pytest.mark.slow
def test_quick_scaling_writes_results_and_plot(tmp_path):
  out = tmp_path / "scaling.json"
  scaling.main(["--quick", f"--output={out}"])
  saved = json.loads(out.read_text())
  (train,) = saved["train"]
  assert train["batch_size"] == 8 and train["images_per_sec"] > 0 and train["xla_memory_mib"] > 0
  assert [r["num_images"] for r in saved["sample"]] == [2] and saved["sample"][0]["seconds"] > 0
  assert [r["T"] for r in saved["eval"]] == [10] and saved["eval"][0]["seconds_per_image"] > 0
  assert "| mnist | 8 |" in saved["markdown"]
  assert (tmp_path / "scaling.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_conv_layer_benchmark_times_every_kernel():
  rows = conv_layer.main(["--quick"])
  assert [(r["c_in"], r["c_out"]) for r in rows] == [(1, 20), (20, 20)]
  for r in rows:
    assert set(r["ms"]) == {"xla forward+backward", "cpu forward+backward", "XLA forward alone"}
    assert all(t > 0 for t in r["ms"].values())
    assert set(r["cores_busy"]) == set(r["ms"]) and all(b > 0 for b in r["cores_busy"].values())


def test_profile_groups_op_kinds():
  assert profile.op_group("fusion(convolution)") == "convolutions"
  assert profile.op_group("dot") == profile.op_group("fusion(dot)") == "matmuls"
  assert profile.op_group("concatenate") == profile.op_group("fusion(dynamic-slice, transpose)")
  assert profile.op_group("fusion(dynamic-slice, transpose)") == "copies"
  assert profile.op_group("fusion(reduce, transpose)") == "elementwise and reductions"
  assert profile.op_group("fusion(add, broadcast, compare)") == "elementwise and reductions"


@pytest.mark.slow
def test_profile_writes_every_op_s_time_in_its_group(tmp_path):
  out = tmp_path / "profile.json"
  results = profile.main(["--batch=16", "--steps=1", f"--output={out}"])
  saved = json.loads(out.read_text())
  assert [g["group"] for g in saved["groups"]] == list(profile.GROUPS)
  assert sum(g["seconds"] for g in saved["groups"]) == pytest.approx(results["op_seconds_per_step"])
  assert saved["op_seconds_per_step"] > 0 and saved["step_s"] > 0


@pytest.mark.slow
def test_the_accelerator_benchmark_in_its_quick_mode(tmp_path):
  from benchmarks import accelerator  # pylint: disable=g-import-not-at-top
  out = tmp_path / "accelerator.json"
  results = accelerator.main(["--quick", f"--workdir={tmp_path / 'run'}", f"--output={out}"])
  saved = json.loads(out.read_text())
  assert saved["backend"] == "cpu" and saved["quick"] is True
  rows = {(r["method"], r["precision"]): r for r in saved["bounds"]}
  assert sorted(rows) == [("all_t", "default"), ("all_t", "highest"),
                          ("stratified", "default"), ("stratified", "highest")]
  for method in ("stratified", "all_t"):  # a CPU computes float32 at every precision
    assert rows[method, "highest"]["bits_per_pixel"] == rows[method, "default"]["bits_per_pixel"]
  assert (tmp_path / "run" / "samples").is_dir() and os.path.exists(saved["training"]["samples"])
  table = (tmp_path / "accelerator.md").read_text()
  assert table == results["markdown"] and "| all_t | default | 8 |" in table
  assert "| mnist | JAX" in table
