"""dpm-jax: the project's programs, from any directory once the package is installed.

  dpm-jax train mnist --workdir=runs/mnist --config.train.num_steps=200
  dpm-jax train heartbeat --workdir=runs/heartbeat     (any registered experiment)
  dpm-jax train mnist --config=my_config.py --workdir=...    (a config file of your own)
  dpm-jax experiments                                  (the registered experiments)
  dpm-jax sample --workdir=runs/mnist --mode=inpaint
  dpm-jax evaluate --workdir=runs/mnist
  dpm-jax table1 --workdir=runs/table1                 (the paper's Table 1, its CPU rows)
  dpm-jax benchmark --quick

`dpm-jax <command> --help` lists a command's flags; `dpm-jax train <experiment>
--print_config` lists its config. Each command is also `python -m
experiments.<name>` (and `python -m benchmarks.run`) from a checkout.
"""

import importlib
import sys

from dpm_jax import errors
from . import common
from . import evaluate
from . import sample
from . import table1

COMMANDS = ("train", "sample", "evaluate", "table1", "experiments", "benchmark")


def main(argv=None) -> int:
  """Runs a dpm-jax command line (without the program name); returns its exit code."""
  from dpm_jax import registry  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    print(__doc__.strip())
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    return usage(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}.")
  if command == "train":
    if not rest or rest[0].startswith("-"):
      return usage(f"name the experiment to train, one of {', '.join(registry.EXPERIMENTS)}: "
                   "dpm-jax train mnist ...")
    try:
      doc = (f"dpm-jax train {rest[0]}: trains the {rest[0]} experiment "
             f"({registry.get(rest[0]).description}).")
    except errors.UserError as err:
      return usage(str(err))
    return common.training_run(rest[0], doc, [f"dpm-jax train {rest[0]}"] + rest[1:])
  if command == "experiments":
    for name, experiment in registry.EXPERIMENTS.items():
      print(f"{name:12s} {experiment.description}; bound in bits per {experiment.unit}; "
            f"sampling: {', '.join(experiment.sampling_modes)}")
    return 0
  if command == "benchmark":  # installed: dpm_jax.benchmarks; a checkout: benchmarks
    package = __package__.rpartition(".")[0]
    importlib.import_module(f"{package}.benchmarks.run" if package else "benchmarks.run").main(rest)
    return 0
  program = {"sample": sample, "evaluate": evaluate, "table1": table1}[command]
  return program.run([f"dpm-jax {command}"] + rest)


def usage(error: str) -> int:
  print(f"error: {error} (dpm-jax --help shows the commands)", file=sys.stderr)
  return 2


def console() -> None:
  """The `dpm-jax` command."""
  common.cli(lambda argv: main(argv[1:]))


if __name__ == "__main__":
  console()
