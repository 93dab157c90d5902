"""Data parallelism: a step on two devices equals the step on one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

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
  assert [r["step"] for r in r1] == [r["step"] for r in r2]
  for a, b in zip(r1, r2):
    for key in ("train/loss", "eval/loss", "train/learning_rate", "train/kl_nats"):
      if key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=key)
