"""Training metrics: workdir/metrics.jsonl, TensorBoard, and the progress line."""

from __future__ import annotations

import json
import math
import os
import time

from absl import logging
import jax
import numpy as np

from dpm_jax import outputs


class MetricWriter:
  """Appends metrics to workdir/metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
    except ImportError:
      logging.warning("tensorboardX is not installed; no TensorBoard event files.")

  def _truncate_after(self, step: int) -> None:
    """Drops records past the resumed step, so a resumed run logs each step once."""
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a kill
        if record.get("step", 0) <= step:
          kept.append(json.dumps(record, sort_keys=True))
    with outputs.atomic_path(self.path) as tmp:
      with open(tmp, "w") as f:
        f.write("".join(k + "\n" for k in kept))

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_float(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> bool:
    self.close()
    return False


def _to_float(v):
  """A scalar as JSON: int, float, or None (null) where it is undefined (NaN, Inf, None)."""
  if v is None:
    return None
  v = np.asarray(v)
  if v.dtype.kind != "f":
    return int(v)
  return float(v) if np.isfinite(v) else None


def read_metrics(workdir: str) -> list:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


class Throughput:
  """Examples per second since the last call to `lap`."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self.reset()

  def reset(self) -> None:
    self._start, self._steps = time.time(), 0

  def tick(self) -> None:
    self._steps += 1

  def lap(self) -> dict:
    dt = time.time() - self._start
    out = ({"perf/images_per_sec": self._steps * self.batch_size / dt,
            "perf/steps_per_sec": self._steps / dt} if self._steps and dt > 0 else {})
    self.reset()
    return out


def log_progress(step: int, num_steps: int, steps_per_epoch: int, record: dict,
                 elapsed: float, steps_done: int, unit: str = "pixel") -> None:
  eta = elapsed / steps_done * (num_steps - step) if steps_done else float("nan")
  loss = record["train/loss"]
  line = (f"step {step}/{num_steps} ({100.0 * step / num_steps:.1f}%, epoch "
          f"{step / steps_per_epoch:.2f}): train bound "
          f"{'(no finite step)' if loss is None else f'{loss:.4f}'} bits/{unit}, lr "
          f"{record['train/learning_rate']:.3g}, "
          f"{record.get('perf/images_per_sec', float('nan')):.0f} examples/s, elapsed "
          f"{hms(elapsed)}, ETA {hms(eta)}")
  if logging.level_info():
    logging.info("%s", line)
  else:  # from Python, where absl shows only warnings: print the progress
    print(line, flush=True)


def hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
