"""dpm-jax: the project's programs, from any directory once the package is installed.

  dpm-jax train mnist --workdir=runs/mnist --config.train.num_steps=200
  dpm-jax train heartbeat --workdir=runs/heartbeat     (also cifar10, swiss_roll)
  dpm-jax train mnist --config=my_config.py --workdir=...    (a config file of your own)
  dpm-jax sample --workdir=runs/mnist --mode=inpaint
  dpm-jax evaluate --workdir=runs/mnist
  dpm-jax benchmark --quick

`dpm-jax <command> --help` lists a command's flags; `dpm-jax train <experiment>
--print_config` lists its config. Each command is also `python -m
experiments.<name>` (and `python -m benchmarks.run`) from a checkout.
"""

import importlib
import sys

EXPERIMENTS = ("mnist", "cifar10", "heartbeat", "swiss_roll")
COMMANDS = ("train", "sample", "evaluate", "benchmark")


def _usage(error: str = "") -> int:
  if error:
    print(f"error: {error} (dpm-jax --help shows the commands)", file=sys.stderr)
    return 2
  try:
    print(__doc__.strip())
  except BrokenPipeError:  # dpm-jax --help | head
    pass
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    return _usage()
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    return _usage(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}.")
  if command == "benchmark":
    from benchmarks import run  # pylint: disable=g-import-not-at-top
    run.main(rest)
    return 0
  if command == "train":
    if not rest or rest[0] not in EXPERIMENTS:
      return _usage(f"name the experiment to train, one of {', '.join(EXPERIMENTS)}: "
                    "dpm-jax train mnist ...")
    module, rest = rest[0], rest[1:]
  else:
    module = command
  program = importlib.import_module(f"experiments.{module}")
  sys.modules["__main__"].__doc__ = program.__doc__  # for --help
  sys.argv = [f"dpm-jax {command}" + (f" {module}" if command == "train" else "")] + rest
  program.run()
  return 0


if __name__ == "__main__":
  sys.exit(main())
