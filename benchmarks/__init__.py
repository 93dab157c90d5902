"""The project's benchmarks (BENCHMARKS.md): python -m benchmarks.<name>."""

import os


def output_path(committed: str, elsewhere: str) -> str:
  """A benchmark's default results file: benchmarks/<committed> from a checkout (the
  figures the repository keeps and BENCHMARKS.md quotes), else runs/<elsewhere> under
  the working directory (never inside an installed package)."""
  here = os.path.dirname(os.path.abspath(__file__))
  if os.path.exists(os.path.join(here, os.pardir, "pyproject.toml")):
    return os.path.join(here, committed)
  return os.path.join("runs", elsewhere)
