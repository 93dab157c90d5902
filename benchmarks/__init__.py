"""The project's benchmarks: python -m benchmarks.<name>."""

import importlib
import os


def output_path(committed: str, elsewhere: str) -> str:
  """A benchmark's default results file: benchmarks/<committed> from a checkout (the
  figures the repository keeps), else runs/<elsewhere> under the working directory
  (never inside an installed package)."""
  here = os.path.dirname(os.path.abspath(__file__))
  if os.path.exists(os.path.join(here, os.pardir, "pyproject.toml")):
    return os.path.join(here, committed)
  return os.path.join("runs", elsewhere)


def shipped_config(name: str, variant: str = ""):
  """experiments/configs/<name>.py's config: a checkout's experiments package, or the
  installed dpm_jax.experiments."""
  package = __package__.rpartition(".")[0]
  prefix = f"{package}.experiments" if package else "experiments"
  return importlib.import_module(f"{prefix}.configs.{name}").get_config(variant)
