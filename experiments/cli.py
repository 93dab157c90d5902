"""dpm-jax: the project's programs, from any directory once the package is installed.

  dpm-jax train mnist --workdir=runs/mnist --config.train.num_steps=200
  dpm-jax train heartbeat --workdir=runs/heartbeat     (any registered experiment)
  dpm-jax train mnist --config=my_config.py --workdir=...    (a config file of your own)
  dpm-jax experiments                                  (the registered experiments)
  dpm-jax sample --workdir=runs/mnist --mode=inpaint
  dpm-jax evaluate --workdir=runs/mnist
  dpm-jax benchmark --quick

`dpm-jax <command> --help` lists a command's flags; `dpm-jax train <experiment>
--print_config` lists its config. Each command is also `python -m
experiments.<name>` (and `python -m benchmarks.run`) from a checkout.
"""

import sys

from dpm_jax import errors
from . import launch

COMMANDS = ("train", "sample", "evaluate", "experiments", "benchmark")


def _usage(error: str = "") -> int:
  if error:
    print(f"error: {error} (dpm-jax --help shows the commands)", file=sys.stderr)
    return 2
  try:
    print(__doc__.strip())
  except BrokenPipeError:  # dpm-jax --help | head
    pass
  return 0


def program(command: str, rest: list):
  """(the Program, its argv) of a dpm-jax command line, or an error message."""
  from dpm_jax import registry  # pylint: disable=g-import-not-at-top
  if command == "train":
    if not rest or rest[0].startswith("-"):
      return None, ("name the experiment to train, one of "
                    f"{', '.join(registry.names())}: dpm-jax train mnist ...")
    name, rest = rest[0], rest[1:]
    try:
      registry.get(name)
    except errors.UserError as err:
      return None, str(err)
    doc = f"dpm-jax train {name}: trains the {name} experiment ({registry.get(name).description})."
    return launch.training_program(f"dpm-jax train {name}", doc, name), (
        [f"dpm-jax train {name}"] + rest)
  if command == "sample":
    from . import sample  # pylint: disable=g-import-not-at-top
    return sample.PROGRAM, ["dpm-jax sample"] + rest
  from . import evaluate  # pylint: disable=g-import-not-at-top
  return evaluate.PROGRAM, ["dpm-jax evaluate"] + rest


def main(argv=None) -> int:
  """Runs a dpm-jax command line (without the program name); returns its exit code."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ("-h", "--help", "help"):
    return _usage()
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    return _usage(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}.")
  if command == "benchmark":
    if __package__.startswith("dpm_jax."):  # installed: dpm_jax.experiments, dpm_jax.benchmarks
      from dpm_jax.benchmarks import run  # pylint: disable=g-import-not-at-top
    else:  # a checkout's experiments/ and benchmarks/
      from benchmarks import run  # pylint: disable=g-import-not-at-top
    run.main(rest)
    return 0
  if command == "experiments":
    from dpm_jax import registry  # pylint: disable=g-import-not-at-top
    for name, experiment in registry.EXPERIMENTS.items():
      print(f"{name:12s} {experiment.description}; bound in bits per {experiment.unit}; "
            f"sampling: {', '.join(experiment.sampling_modes)}")
    return 0
  prog, prog_argv = program(command, rest)
  if prog is None:
    return _usage(prog_argv)
  return prog.run(prog_argv)


def console() -> None:
  """The `dpm-jax` command."""
  launch.setup_logging()
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  launch.exit_now(main())


if __name__ == "__main__":
  console()
