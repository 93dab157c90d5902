"""Writing results: atomically, and never a NaN or an infinity.

A file is written beside its target and renamed over it, so a reader never sees
half a file and a failure (or a stop signal) keeps the old one. JSON gets null
where a value is undefined; arrays with NaN or Inf are an error, not a file.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Any, Optional

import numpy as np
from dpm_jax import errors


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary path beside `path`, renamed to it if the block succeeds."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{os.getpid()}{ext}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def writable_folder(what: str, folder: str, fix: str) -> str:
  """Checks, before any work is done, that `folder` can be written: with a probe file
  in it, or in its nearest existing parent (nothing is created).

  Raises:
    errors.UserError: it cannot (a read-only run, a file in the way), naming `fix`.
  """
  existing = os.path.abspath(folder)
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  probe = os.path.join(existing, f".write_test.{os.getpid()}")
  try:
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as err:
    raise errors.UserError(
        f"Cannot write to {what} {folder} ({err.strerror or err}); {fix}.") from err
  return folder


def json_ready(obj: Any) -> Any:
  """obj with NaN and infinities as None (JSON null: undefined) and numpy scalars as Python's."""
  if isinstance(obj, dict):
    return {k: json_ready(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [json_ready(v) for v in obj]
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically."""
  with atomic_path(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
  return path


def write_json(path: str, obj: Any) -> str:
  """Writes JSON; NaN and Inf become null. A str is written as it is."""
  return write_text(path, obj if isinstance(obj, str) else json.dumps(
      json_ready(obj), indent=2, sort_keys=True, allow_nan=False))


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None if there is no such file."""
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def require_finite(what: str, **arrays) -> None:
  """Raises errors.UserError naming the first array that holds NaN or Inf."""
  for name, array in arrays.items():
    array = np.asarray(array)
    if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
      bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
      raise errors.UserError(
          f"{what}: {bad} of {np.size(array)} values of {name!r} are NaN or Inf (the model's "
          "parameters or the conditioning are broken); nothing was written.")


def save_npz(path: str, **arrays) -> str:
  """Writes arrays to a compressed .npz; raises errors.UserError for NaN/Inf."""
  require_finite(path, **arrays)
  with atomic_path(path) as tmp:
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  return path
