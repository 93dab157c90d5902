"""Data parallelism: two CPU devices against one, in this process (conftest shows two)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import runs
from conftest import ROOT, image_task
from dpm_jax import data, diffusion, evaluate, parallel, rundir, sampling
from dpm_jax import errors, execution
from experiments.configs import test as test_config
from runs import small_digits, train_small

# Devices and run safety: the execution layer, tested in the whole suite (not the fast tier).
pytestmark = pytest.mark.slow

STATS = data.DataStats(4.0, -2.0, 0.02)


@pytest.fixture(scope="module")
def devices():
  assert jax.device_count() >= 2, jax.devices()
  return parallel.DataParallel(jax.devices()[:1]), parallel.DataParallel(jax.devices()[:2])


@pytest.mark.parametrize("t_sampling", [pytest.param("per_minibatch", marks=pytest.mark.slow),
                                        "per_example", "stratified"])
def test_gradients_on_two_devices_match_one(devices, t_sampling):
  """Whole and micro-batched gradients on two devices against one device."""
  one, two = devices
  cfg = test_config.get_config().model
  cfg.t_sampling = t_sampling
  model = diffusion.make_model(cfg)
  params = diffusion.init_params(model, jax.random.key(0))
  x = np.asarray(data.to_model_units(data.load_embedded().train[:32], STATS))
  loss_fn = diffusion.make_loss_fn(model, uniform_noise=0.02)
  res = {}
  for name, par, micro in (("one", one, 0), ("two", two, 0), ("two_micro", two, 8)):
    fn = jax.jit(parallel.make_loss_and_grad(loss_fn, micro_batch_size=micro, mesh=par.mesh))
    res[name] = fn(par.put_replicated(params), par.put_batch(x), jax.random.key(3))
  (loss, aux), grads = res["one"]
  for name in ("two", "two_micro"):
    (loss_n, aux_n), grads_n = res[name]
    np.testing.assert_allclose(loss_n, loss, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(aux_n["kl_nats"], aux["kl_nats"], rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_n)):
      np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_samples_and_bounds_on_two_devices_match_one(devices):
  one, two = devices
  config = test_config.get_config()
  images = data.load_embedded().train[:32]
  task = image_task(config.model, images, STATS)
  params = diffusion.init_params(task.model, jax.random.key(0))
  out = {}
  for name, par in (("one", one), ("two", two)):
    samples = sampling.make_sampler(task.model, num_images=6, par=par)(params, jax.random.key(5))
    out[name] = {
        "devices": len(samples.sharding.device_set), "samples": np.asarray(samples),
        "eval": evaluate.make_test_evaluator(task, config.eval, par, key=jax.random.key(7))(
            params)["eval/loss"],
        "all_t": evaluate.bound_all_t(task, params, images[:8], jax.random.key(8), batch_size=4,
                                      par=par)["per_image"]}
  assert out["one"]["devices"] == 1 and out["two"]["devices"] == 2
  default = sampling.make_sampler(task.model, num_images=5)(params, jax.random.key(5))
  assert len(default.sharding.device_set) == 1  # 5 images do not split over 2
  np.testing.assert_allclose(out["one"]["samples"], out["two"]["samples"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["one"]["eval"], out["two"]["eval"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["one"]["all_t"], out["two"]["all_t"], rtol=1e-5, atol=1e-6)
  default_all_t = evaluate.bound_all_t(task, params, images[:8], jax.random.key(8), batch_size=4)
  np.testing.assert_allclose(out["one"]["all_t"], default_all_t["per_image"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_training_on_two_devices_matches_one(tmp_path):
  """The training loop (batches, replicated state, evaluation, metrics) on two devices.

  With one t per example, the gradients agree to rounding (above), but a few
  RMSprop entries whose gradient is ~0 amplify the rounding within a few steps
  (lr * sqrt(10) * sign(g) at first), so the loop is compared with one t per
  minibatch, where the whole run agrees to rounding.
  """
  p1, r1 = train_small(tmp_path / "one", jax.devices()[:1])
  p2, r2 = train_small(tmp_path / "two", jax.devices()[:2])
  for a, b in zip(p1, p2):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert [r["step"] for r in r1] == [r["step"] for r in r2] == [2, 3, 4, 6]
  for a, b in zip(r1, r2):
    for key in ("train/loss", "eval/loss", "train/learning_rate", "train/kl_nats"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # A checkpoint written from two devices loads onto one.
  loaded = jax.tree.leaves(rundir.load_run(str(tmp_path / "two")).params)
  assert len(loaded) == len(p2)
  for a, b in zip(loaded, p2):
    np.testing.assert_array_equal(a, b)


def test_cpu_devices_for():
  assert execution.cpu_devices_for(512, 500, 36, cores=2) == 2
  assert execution.cpu_devices_for(512, 500, 36, cores=8) == 4
  assert execution.cpu_devices_for(200, 16, cores=16) == 8
  assert execution.cpu_devices_for(7, cores=4) == 1
  assert execution.cpu_devices_for(12, cores=1) == 1


@pytest.mark.slow
def test_use_cpu_devices_before_jax_starts():
  script = ("import jax\nfrom dpm_jax import execution\n"
            "print(execution.show_cpu_devices(2), jax.device_count())\n"
            "print(execution.show_cpu_devices(3), jax.device_count())\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  # The second call comes after JAX started: it keeps the two devices, with a warning.
  assert res.stdout.split() == ["2", "2", "0", "2"]
  assert "Keeping JAX's 2 CPU devices (asked for 3)" in res.stderr
  with pytest.raises(errors.UserError, match="at least 1"):
    execution.show_cpu_devices(0)


def test_the_plan_splits_every_batch_and_records_nothing(tmp_path, monkeypatch):
  """compute.cpu_devices=0 splits training over both devices, =1 over the first; the plan
  is decided from the settings alone: nothing is timed, cached or written for it."""
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
  config = test_config.get_config()
  config.train.update(num_steps=2, eval_every_steps=0, sample_every_steps=0)
  small = small_digits()
  state = runs.train(config, str(tmp_path / "all"), dataset=small)
  assert len(state.step.sharding.device_set) == 2
  config.compute.cpu_devices = 1
  state = runs.train(config, str(tmp_path / "one"), dataset=small)
  assert len(state.step.sharding.device_set) == 1
  assert not (tmp_path / "cache").exists()
  assert not any(name.endswith("split.json") for name in os.listdir(tmp_path / "all"))


def test_plan(monkeypatch):
  config = test_config.get_config()
  model = diffusion.make_model(config.model, "cpu")
  plan = execution.plan(config.compute, 512, model)
  assert (len(plan.devices), plan.conv, plan.micro_batch_size) == (2, "cpu", 64)
  monkeypatch.setattr(execution, "usable_cores", lambda: 2)
  assert execution.plan(config.compute, 512, model).concurrent_micro_batches == 1
  assert "2 CPU device(s)" in plan.describe() and "micro-batches of 64" in plan.describe()
  assert "matmuls at 'highest' precision" in plan.describe()
  config.compute.cpu_devices = 1
  one = execution.plan(config.compute, 512, model)
  assert len(one.devices) == 1 and one.concurrent_micro_batches == 2
  assert "micro-batches of 64, 2 side by side" in one.describe()
  config.compute.cpu_devices = 3
  with pytest.raises(errors.UserError, match="cpu_devices=3 exceeds the 2 CPU devices"):
    execution.plan(config.compute, 512, model)
  config.compute.cpu_devices = 0
  with pytest.raises(errors.UserError, match="train.batch_size=7 is not divisible by the 2"):
    execution.plan(config.compute, 7, model)


@pytest.mark.slow
@pytest.mark.parametrize("env,count,devices,logged", [
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, None, 3,
     "Using the 3 CPU devices XLA_FLAGS sets"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 2, 3,
     "XLA_FLAGS shows 3 CPU devices; the run uses the first 2"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}, 4, 3,
     "XLA_FLAGS shows 3 CPU devices, fewer than the 4 asked for; change XLA_FLAGS"),
    ({"JAX_NUM_CPU_DEVICES": "4"}, None, 4, "Using the 4 CPU devices JAX_NUM_CPU_DEVICES sets"),
    ({"JAX_NUM_CPU_DEVICES": "4"}, 2, 2, "compute.cpu_devices=2 replaces JAX_NUM_CPU_DEVICES=4"),
])
def test_the_user_s_device_settings_are_used_or_named(env, count, devices, logged):
  script = ("import sys, jax\nfrom absl import logging\nfrom dpm_jax import errors, execution\n"
            "logging.set_verbosity(logging.INFO)\n"
            f"execution.show_cpu_devices({count}, 1)\nprint(jax.device_count())\n"
            "try:\n  execution.check_batch_divides(97, jax.device_count())\n"
            "except errors.UserError as err:\n  print(err)\n")
  clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
  res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**clean, **env},
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.split()[0] == str(devices) and logged in res.stderr, res.stderr
  assert "--cpu_devices" in res.stdout
  assert ("at most the devices XLA_FLAGS' --xla_force_host_platform_device_count shows, or "
          "change it" in res.stdout) == ("XLA_FLAGS" in env)


def test_a_device_count_in_the_environment_that_is_not_one_is_an_error(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  for value in ("abc", "0"):
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", value)
    with pytest.raises(errors.UserError, match=rf"JAX_NUM_CPU_DEVICES='{value}' is not a count"):
      execution.show_cpu_devices(None, 2)


def _matmuls(stablehlo: str) -> list:
  return [line for line in stablehlo.splitlines()
          if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]


@pytest.mark.parametrize("precision,shown", [("high", "HIGH"), ("highest", "HIGHEST")])
def test_training_traces_its_matmuls_at_the_configured_precision(tmp_path, monkeypatch,
                                                                  precision, shown):
  """A CPU computes float32 at any precision, so the lowered program is what shows it."""
  from dpm_jax import step as step_lib  # pylint: disable=g-import-not-at-top
  lowered, real = [], step_lib.jit_train_step

  def spy(task, plan):
    train_step = real(task, plan)

    def step(*args):
      lowered.append(lowered or train_step.lower(*args).as_text())
      return train_step(*args)
    return step

  monkeypatch.setattr(step_lib, "jit_train_step", spy)
  config = test_config.get_config()
  config.train.update(num_steps=1, eval_every_steps=0, sample_every_steps=0)
  config.compute.matmul_precision = precision
  runs.train(config, str(tmp_path), dataset=small_digits())
  ops = _matmuls(lowered[0])
  assert ops and all(f"precision = [{shown}, {shown}]" in op or
                     f"precision_config = [#stablehlo<precision {shown}>" in op for op in ops)


def test_the_bound_traces_its_matmuls_at_the_configured_precision():
  config = test_config.get_config()
  task = image_task(config.model, np.zeros((8, 28, 28, 1), np.uint8), STATS)
  params = diffusion.init_params(task.model, jax.random.key(0))
  x = np.zeros((4, 28, 28, 1), np.float32)
  t = np.full((4,), 3, np.int32)
  kl = jax.jit(lambda p, x, t, k: evaluate.kl_per_example(task, p, x, t, k))
  for precision in ("default", "highest"):
    config.compute.matmul_precision = precision
    with execution.matmul_precision(config.compute):
      text = kl.lower(params, x, t, jax.random.key(1)).as_text()
      assert execution.precision_in_force() == precision
    ops = _matmuls(text)
    assert ops and all(precision.upper() in op for op in ops), ops[:2]
