"""Data parallelism: a step on two devices equals the step on one."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from dpm_jax import checkpoints
from dpm_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, sys
import jax, numpy as np
from absl import logging
logging.set_verbosity(logging.INFO)
from dpm_jax import data, train
from experiments.configs import test as test_config
config = test_config.get_config()
config.model.t_sampling = sys.argv[2]
config.train.num_steps = 6
config.train.log_every_steps = 2
config.train.eval_every_steps = 3
ds = data.load_embedded()
ds = data.Dataset(ds.train[:128], ds.test[:64], "small")
state = train.train_and_evaluate(config, sys.argv[1], dataset=ds)
np.savez(sys.argv[1] + "/params.npz", *[np.asarray(x) for x in jax.tree.leaves(state.params)])
print(json.dumps({"devices": jax.device_count()}))
"""


def run(workdir, devices, t_sampling):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  res = subprocess.run([sys.executable, "-c", SCRIPT, str(workdir), t_sampling], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert json.loads(res.stdout.strip().splitlines()[-1])["devices"] == devices
  assert f"on {devices} device(s)" in res.stderr
  with np.load(os.path.join(workdir, "params.npz")) as f:
    params = [f[k] for k in sorted(f.files, key=lambda k: int(k.split("_")[1]))]
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return params, records


@pytest.mark.parametrize("t_sampling", ["per_minibatch", "per_example"])
def test_two_devices_match_one(tmp_path, t_sampling):
  p1, r1 = run(tmp_path / "one", 1, t_sampling)
  p2, r2 = run(tmp_path / "two", 2, t_sampling)
  # RMSprop's first steps are lr * sqrt(10) * sign(g): a gradient entry that is
  # ~0 up to summation order can move by a few 1e-5; the bulk agrees closely.
  for a, b in zip(p1, p2):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert np.median(np.abs(a - b)) < 1e-6
  # A checkpoint written from two devices loads in this process, whatever its devices.
  loaded = jax.tree.leaves(checkpoints.load_run(str(tmp_path / "two")).params)
  assert len(loaded) == len(p2)
  for a, b in zip(loaded, p2):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in r1] == [r["step"] for r in r2]
  for a, b in zip(r1, r2):
    for key in ("train/loss", "eval/loss", "train/learning_rate", "train/kl_nats"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)


# One process with two CPU devices: each computation on both devices against
# the same computation on the first device alone.
TWO_DEVICE_SCRIPT = """
import json
import jax, jax.numpy as jnp, numpy as np
from dpm_jax import data, diffusion, evaluate, parallel, sampling
from experiments.configs import test as test_config
assert jax.device_count() == 2, jax.devices()
one, two = parallel.DataParallel(jax.devices()[:1]), parallel.DataParallel()
out = {}
cfg = test_config.get_config()
images = data.load_embedded().train[:32]
for t_sampling in ("per_minibatch", "per_example"):
  cfg.model.t_sampling = t_sampling
  model = diffusion.make_model(cfg.model)
  params = diffusion.init_params(model, jax.random.key(0))
  x = data.to_model_units(images, data.DataStats(4.0, -2.0, 0.02))
  res = {}
  for name, par, micro in (("one", one, 0), ("two", two, 0), ("two_micro", two, 8)):
    fn = diffusion.make_loss_and_grad_fn(model, uniform_noise=0.02, micro_batch_size=micro,
                                         mesh=par.mesh)
    (loss, aux), grads = jax.jit(fn)(par.put_replicated(params), par.put_batch(np.asarray(x)),
                                     jax.random.key(3))
    res[name] = [float(loss), float(aux["kl_nats"])] + [
        np.asarray(g).ravel().tolist() for g in jax.tree.leaves(grads)]
  out["grad_" + t_sampling] = res
model = diffusion.make_model(cfg.model)
params = diffusion.init_params(model, jax.random.key(0))
for name, par in (("one", one), ("two", two)):
  s = sampling.make_sampler(model, num_images=6, par=par)
  samples = s(params, jax.random.key(5))
  out["sample_" + name] = np.asarray(samples).ravel().tolist()
  out["sample_devices_" + name] = len(samples.sharding.device_set)
out["default_sampler_devices"] = len(sampling.make_sampler(
    model, num_images=5)(params, jax.random.key(5)).sharding.device_set)
stats = data.DataStats(4.0, -2.0, 0.02)
ev_cfg = cfg.eval
for name, par in (("one", one), ("two", two)):
  out["eval_" + name] = evaluate.make_test_evaluator(
      model, stats, images, ev_cfg, par, key=jax.random.key(7))(params)["eval/loss"]
  out["all_t_" + name] = evaluate.bound_all_t(
      model, params, images[:8], stats, jax.random.key(8), batch_size=4, par=par)["per_image"].tolist()
out["all_t_default"] = evaluate.bound_all_t(
    model, params, images[:8], stats, jax.random.key(8), batch_size=4)["per_image"].tolist()
print(json.dumps(out))
"""


def test_two_cpu_devices_match_one_in_one_process():
  """Gradients (whole and micro-batched), samples, the training evaluator and the all-t bound."""
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  res = subprocess.run([sys.executable, "-c", TWO_DEVICE_SCRIPT], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads(res.stdout.strip().splitlines()[-1])
  for t_sampling in ("per_minibatch", "per_example"):
    r = out["grad_" + t_sampling]
    for name in ("two", "two_micro"):
      for a, b in zip(r["one"], r[name]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=f"{t_sampling} {name}")
  assert out["sample_devices_one"] == 1 and out["sample_devices_two"] == 2
  assert out["default_sampler_devices"] == 1  # 5 images do not split over 2
  np.testing.assert_allclose(out["sample_one"], out["sample_two"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["eval_one"], out["eval_two"], rtol=1e-5, atol=1e-6)
  for name in ("two", "default"):
    np.testing.assert_allclose(out["all_t_one"], out["all_t_" + name], rtol=1e-5, atol=1e-6)


def test_cpu_devices_for():
  assert parallel.cpu_devices_for(512, 500, 36, cores=2) == 2
  assert parallel.cpu_devices_for(512, 500, 36, cores=8) == 4
  assert parallel.cpu_devices_for(200, 16, cores=16) == 8
  assert parallel.cpu_devices_for(7, cores=4) == 1
  assert parallel.cpu_devices_for(12, cores=1) == 1


def test_use_cpu_devices_before_jax_starts():
  script = ("import jax\nfrom dpm_jax import parallel\n"
            "print(parallel.use_cpu_devices(2), jax.device_count())\n"
            "print(parallel.use_cpu_devices(3), jax.device_count())\n")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
  assert res.returncode == 0, res.stderr[-3000:]
  # The second call comes after JAX started: it keeps the two devices, with a warning.
  assert res.stdout.split() == ["2", "2", "0", "2"]
  assert "Keeping JAX's CPU devices as they are" in res.stderr
  with pytest.raises(parallel.config_lib.ConfigError, match="at least 1"):
    parallel.use_cpu_devices(0)
