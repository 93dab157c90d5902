"""Which CPU devices the training step runs on (dpm_jax.parallel.training_devices).

The timing is faked: what is tested is the decision and what is remembered, not
this host's speed (that is benchmarks/run.py's)."""

import json

import jax
import pytest

from dpm_jax import parallel


@pytest.fixture
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DPM_JAX_CACHE_DIR", str(tmp_path))
  return tmp_path / "training_split.json"


def timer(seconds_by_count, calls):
  def time_step(devices):
    calls.append(len(devices))
    return seconds_by_count[len(devices)]
  return time_step


@pytest.mark.parametrize("seconds,expected", [({1: 0.5, 2: 0.4}, 2), ({1: 0.4, 2: 0.5}, 1)])
def test_a_long_run_takes_the_faster_and_remembers_it(cache, seconds, expected):
  calls = []
  devices, how = parallel.training_devices(0, num_steps=1000, time_step=timer(seconds, calls),
                                           signature={"model": "a"})
  assert len(devices) == expected and calls == [1, 2]
  assert "1 device(s) 400 ms" in how or "1 device(s) 500 ms" in how
  (entry,) = json.loads(cache.read_text()).values()
  assert entry["devices"] == expected
  # Measured once per machine and program: the second run reads the answer.
  again, how = parallel.training_devices(0, num_steps=1000, time_step=timer(seconds, calls),
                                         signature={"model": "a"})
  assert len(again) == expected and calls == [1, 2] and "measured earlier" in how
  # Another program is measured anew.
  parallel.training_devices(0, num_steps=1000, time_step=timer(seconds, calls),
                            signature={"model": "b"})
  assert calls == [1, 2, 1, 2]


def test_short_runs_and_explicit_counts_are_not_timed(cache):
  calls = []
  time_step = timer({1: 0.1, 2: 9.0}, calls)
  devices, how = parallel.training_devices(0, num_steps=parallel.CALIBRATE_MIN_STEPS - 1,
                                           time_step=time_step, signature={})
  assert len(devices) == jax.device_count() == 2 and "short run" in how
  devices, how = parallel.training_devices(1, num_steps=10**6, time_step=time_step, signature={})
  assert len(devices) == 1 and how == "compute.cpu_devices=1"
  assert calls == [] and not cache.exists()


def test_the_counts_training_may_choose_are_what_training_devices_can_return():
  assert parallel.training_device_counts(0) == [1, jax.device_count()] == [1, 2]
  assert parallel.training_device_counts(1) == [1]
  assert parallel.training_device_counts(2) == [2]


def test_a_damaged_or_unwritable_cache_is_measured_again(cache, tmp_path, monkeypatch):
  cache.write_text("{not json")
  calls = []
  devices, _ = parallel.training_devices(0, num_steps=1000, time_step=timer({1: 1, 2: 2}, calls),
                                         signature={})
  assert len(devices) == 1 and calls == [1, 2]
  blocker = tmp_path / "file"
  blocker.write_text("")
  monkeypatch.setenv("DPM_JAX_CACHE_DIR", str(blocker / "below_a_file"))
  devices, _ = parallel.training_devices(0, num_steps=1000, time_step=timer({1: 2, 2: 1}, calls),
                                         signature={})
  assert len(devices) == 2 and calls == [1, 2, 1, 2]
