"""Two processes joined by jax.distributed train as one process with two devices.

Each process shows one CPU device; JAX's CPU collectives (gloo) connect them
over the loopback interface. The training loop is the same code as on one
host: the batch is split over the global mesh (each process feeds its half),
the state is replicated, checkpoints and metrics are written once.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT
from dpm_jax import metrics, rundir
from runs import train_small

WORKER = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 1)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                           process_id=process_id, initialization_timeout=60)
assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
sys.path.insert(0, "tests")
from runs import train_small
params, _ = train_small(workdir, None)
if process_id == 0:
  import numpy as np
  np.savez(workdir + "/params.npz", *[np.asarray(p) for p in params])
"""


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(tmp_path):
  workdir, port = tmp_path / "two_processes", free_port()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  # Each worker shows one device (jax_num_cpu_devices); other XLA flags (the tests'
  # optimisation level) apply to it as to this process.
  env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                              if "device_count" not in f)
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    outputs = [p.communicate(timeout=240)[0] for p in procs]
  finally:
    for p in procs:  # a process whose peer died waits for it until killed
      p.kill()
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  want, want_records = train_small(tmp_path / "one_process", jax.devices()[:2])
  with np.load(workdir / "params.npz") as f:
    got = [f[f"arr_{i}"] for i in range(len(f.files))]
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  records = metrics.read_metrics(str(workdir))
  assert [r["step"] for r in records] == [r["step"] for r in want_records]
  for a, b in zip(records, want_records):
    assert set(a) == set(b)
    for key in ("train/loss", "eval/loss", "train/kl_nats"):
      if key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert rundir.load_run(str(workdir)).step == 6
