"""Shared test setup: the CPU, two devices, a compilation cache, tiny model configs.

Tiers: `python -m pytest -m "not slow"` runs the fast tier (the math, parity,
gradient checks, one training step; under a minute); `python -m pytest` runs
everything. Tests that start processes or train for many steps are marked
`slow`.
"""

import os
import tempfile

# Tests run on the CPU, whatever the machine has.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's compiled programs are cached on disk and shared by the test process and
# the processes it starts: the same small programs are compiled once per machine.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "dpm_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


def _xla_knows(flag: str) -> bool:
  """Whether the installed XLA defines a flag (it aborts on an unknown one in XLA_FLAGS)."""
  import glob, importlib.util, mmap  # pylint: disable=g-import-not-at-top,multiple-imports
  jaxlib = os.path.dirname(importlib.util.find_spec("jaxlib").origin)
  for path in glob.glob(os.path.join(jaxlib, "*.so")):
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
      if m.find(flag.encode()) >= 0:
        return True
  return False


# Tests compile many small programs once each, so compiling dominates a first run. Two
# XLA options halve a program's compile time: backend optimisation level 0, and the
# CPU backend's older emitter for elementwise fusions (its newer MLIR fusion emitters are
# slower to compile; the switch is used where the installed XLA still has it). The
# programs compute the same functions; every tolerance holds. The entry points and
# benchmarks keep XLA's defaults. A flag already set wins.
for _flag in ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"):
  _name = _flag.split("=")[0]
  if _name not in os.environ.get("XLA_FLAGS", "") and _xla_knows(_name[2:]):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

# Two CPU devices in this process (its subprocesses choose their own), so that
# data parallelism is tested in process against the first device alone. The
# backend starts now, so no test can change the count for the ones after it.
jax.config.update("jax_num_cpu_devices", 2)
assert jax.device_count() == 2, jax.devices()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_model_config(**overrides):
  """The test config's model (experiments/configs/test.py) on 8x8 images with two scales
  and T = 20: small enough for float64 gradient checks."""
  from experiments.configs import test as test_config  # pylint: disable=g-import-not-at-top
  cfg = test_config.get_config().model
  cfg.spatial_width = 8
  cfg.n_scales = 2
  cfg.trajectory_length = 20
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture
def tiny_config():
  return tiny_model_config()


def image_task(model_cfg, images, stats=None, conv="auto"):
  """The image Task of a model config on given uint8 images (train and test alike)."""
  from dpm_jax import data as data_lib, experiment, images as images_lib  # pylint: disable=g-import-not-at-top
  config = images_lib.MNIST.default_config()
  config.model = model_cfg
  config.compute.conv = conv
  config.eval.num_strata = 5  # at most T - 1 of the tiny models
  return experiment.build(images_lib.MNIST, config, data_lib.Dataset(images, images, "test"),
                          None if stats is None else stats.to_dict())


# The modules that take longest, first: with one worker per core (pytest-xdist,
# --dist loadfile) the last module to start then ends with the others.
_LONGEST_FIRST = ("test_matrix", "test_train", "test_faults", "test_parallel", "test_diffusion",
                  "test_multiprocess", "test_sampling", "test_entry_points", "test_kernels")


def pytest_collection_modifyitems(config, items):
  del config
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.module.__name__, len(rank)))
