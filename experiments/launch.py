"""What the entry points share: their flags, the config, stop signals and exit codes.

Each program (train, sample, evaluate) is a `Program`: flags defined on a
FlagValues of its own, and a main. `Program.run(argv) -> exit code` runs it
in the calling process (the tests, `dpm-jax`), `Program.cli()` as a command.
Every way a run can fail for a reason the user can fix (a flag or config
value, a config that does not exist, data, a checkpoint, a NaN) is one line
on stderr, `error: ...`, and exit code 2; a stop signal is one line and
130 (SIGINT) or 143 (SIGTERM); --help is exit code 0.
"""

from __future__ import annotations

import difflib
import functools
import logging as std_logging
import os
import re
import sys
import textwrap
from typing import Callable, List, Optional, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags
from dpm_jax import errors

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--help=true")


def shipped_configs() -> List[str]:
  return sorted(n[:-3] for n in os.listdir(CONFIG_DIR)
                if n.endswith(".py") and not n.startswith("_"))


def config_path(name: str) -> str:
  """The path of a config shipped with the package: 'mnist' -> .../configs/mnist.py."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def resolve_config(value: str) -> str:
  """A --config value as a path[:variant]: a path as given, or a shipped config's
  name ('mnist', 'mnist.py', 'configs/mnist.py' where no such file is here).

  Raises:
    errors.UserError: neither names a file, with the closest shipped config.
  """
  path, colon, variant = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)
  name = name[:-3] if name.endswith(".py") else name
  if name in shipped_configs() and (os.sep not in path or not os.path.exists(os.path.dirname(path))
                                    or os.path.dirname(path).endswith("configs")):
    return config_path(name) + colon + variant
  close = difflib.get_close_matches(name, shipped_configs(), n=1, cutoff=0.5)
  hint = f"; did you mean {close[0]!r} ({os.path.relpath(config_path(close[0]))})?" if close else "."
  raise errors.UserError(f"no config file {path!r}{hint} Shipped configs: {', '.join(shipped_configs())}.")


def normalize_argv(argv: Sequence[str]) -> List[str]:
  """argv with --flagfile expanded, `--config X` joined to `--config=X`, and the
  config named as a path (resolve_config)."""
  try:
    argv = flags.FlagValues().read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as err:
    raise errors.UserError(str(err).splitlines()[0]) from err
  out, i = [argv[0]], 1
  while i < len(argv):
    arg = argv[i]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      arg, i = f"--config={argv[i + 1]}", i + 1
    if re.match(r"^--?config=", arg):
      arg = "--config=" + resolve_config(arg.split("=", 1)[1])
    out.append(arg)
    i += 1
  return out


def _field_error(err: Exception) -> str:
  """One line for an override of a field the config does not have."""
  text = str(err)
  hint = re.search(r'Did you mean "([\w.]+)" instead of "([\w.]+)"\?', text)
  field = re.search(r"'([\w.]+)'|\"([\w.]+)\"|([\w.]+)", text)
  name = next((g for g in field.groups() if g), text) if field else text
  return (f"the config has no field {name!r}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
          + "; --print_config lists the fields.")


def _config_file_error(err: Exception) -> str:
  """One line for a config file that fails to load: the error it raised, unqualified."""
  last = str(err).strip().splitlines()[-1]
  return "cannot load the config: " + re.sub(r"^[\w.]*\.(\w+(Error|Exception)): ", "", last)


class Program:
  """An entry point: flags on a FlagValues of its own, and a main.

  Attributes:
    name: how it is called ('experiments.sample', 'dpm-jax sample').
    doc: its description for --help.
    define: define(flag_values, argv) defines its flags.
    main: main(flag_values) runs it; raises to fail (see `run`).
  """

  def __init__(self, name: str, doc: str, define: Callable, main: Callable):
    self.name, self.doc, self.define, self.main = name, doc, define, main

  def parse(self, argv: Sequence[str]) -> flags.FlagValues:
    """A FlagValues with this program's flags parsed from argv (argv[0] the program)."""
    argv = normalize_argv(argv)
    values = flags.FlagValues()
    try:
      self.define(values, argv)
      rest = values(argv)
    except flags.Error as err:
      if "Error whilst parsing config file" in str(err):
        raise errors.UserError(_config_file_error(err)) from err
      raise errors.UserError(str(err).splitlines()[0].replace("flag --", "--")) from err
    except (AttributeError, KeyError) as err:  # --config.<unknown field>=...
      raise errors.UserError(_field_error(err)) from err
    except (IOError, TypeError, ValueError) as err:  # the config file itself
      raise errors.UserError(_config_file_error(err)) from err
    if len(rest) > 1:
      raise errors.UserError(f"unexpected arguments {rest[1:]}; flags are --name=value.")
    return values

  def run(self, argv: Sequence[str]) -> int:
    """Runs the program in this process; returns its exit code."""
    if any(arg in HELP_ARGS for arg in argv[1:]):
      try:
        self.print_help(argv)
      except BrokenPipeError:  # | head
        pass
      return 0
    try:
      values = self.parse(argv)
      self.main(values)
      return 0
    except errors.UserError as err:
      return fail(str(err))
    except errors.Stopped as err:  # a stop signal: its one line, 130 or 143
      print(str(err), file=sys.stderr, flush=True)
      return err.code

  def cli(self) -> None:
    """Runs the program as a command and exits with its code."""
    setup_logging()
    flags.FLAGS.mark_as_parsed()  # libraries reading absl's global flags (grain's workers)
    code = self.run(sys.argv)
    exit_now(code)

  def print_help(self, argv) -> None:
    """The description and the flags of this program, on stdout."""
    values = flags.FlagValues()
    self.define(values, normalize_argv(argv[:1]))
    print(self.doc.strip() + "\n")
    print("flags:")
    for name in sorted(set(values)):
      flag = values[name]
      if "." in name or name != flag.name:  # config overrides, short names
        continue
      default = "" if flag.default is None else f" (default: {flag.default_as_str})"
      print(f"  --{flag.name}")
      print(textwrap.fill(flag.help + default, 80, initial_indent=" " * 6, break_on_hyphens=False,
                          subsequent_indent=" " * 6))
    if "config" in values:
      print("\nThe config: --print_config lists every field, its value and meaning; "
            "--config.<section>.<field>=<value> sets one (e.g. --config.train.num_steps=200); "
            "--config=<name>:tiny runs a seconds-long variant.")


def fail(message: str) -> int:
  """One line on stderr; returns exit code 2."""
  print(f"error: {message}".replace("\n", " "), file=sys.stderr, flush=True)
  return 2


def exit_now(code: int) -> None:
  """Exits with `code` once everything is flushed; everything the run keeps is on
  disk by now (checkpoint managers are closed), and nothing is left to clean up
  that the interpreter's shutdown would do better."""
  sys.stdout.flush()
  sys.stderr.flush()
  std_logging.shutdown()
  os._exit(code)


def setup_logging() -> None:
  """INFO logging through absl's handler, without Orbax's per-save lines or JAX's
  probe for absent TPUs, and without "Event loop is closed" reports."""
  from dpm_jax import rundir  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  rundir.quiet_orbax_logs()
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)
  sys.unraisablehook = _drop_closed_event_loop


_default_unraisablehook = sys.unraisablehook


def _drop_closed_event_loop(unraisable) -> None:
  """Drops "Event loop is closed" reports: Orbax's storage callbacks arriving
  after a failed save or restore closed its event loop, after the error itself
  was reported. Every other unraisable exception is printed as usual."""
  if not (isinstance(unraisable.exc_value, RuntimeError)
          and "Event loop is closed" in str(unraisable.exc_value)):
    _default_unraisablehook(unraisable)


# ----------------------------------------------------------------------------
# Flags several programs share.


def define_cpu_devices(values: flags.FlagValues) -> None:
  flags.DEFINE_integer(
      "cpu_devices", None, "When JAX runs on the CPU: the CPU devices it shows, every batch "
      "split over them. 0: one per core, as many as divide the batch; N > 0: N. No effect "
      "on GPUs and TPUs. Default: config.compute.cpu_devices when training, else 0.", lower_bound=0, flag_values=values)


def use_cpu_devices(values: flags.FlagValues, *batch_sizes: int, configured: int = 0) -> None:
  """Shows JAX --cpu_devices (else `configured`) CPU devices, before JAX runs anything."""
  from dpm_jax import execution  # pylint: disable=g-import-not-at-top
  count = configured if values.cpu_devices is None else values.cpu_devices
  execution.show_cpu_devices(count or execution.cpu_devices_for(*batch_sizes))


def define_run_flags(values: flags.FlagValues) -> None:
  """--workdir, --step and --cpu_devices: the flags of programs that read a run."""
  flags.DEFINE_string("workdir", None, "Run directory made by a training entry point.",
                      required=True, flag_values=values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("seed", 0, "The draws' seed.", lower_bound=0, flag_values=values)
  define_cpu_devices(values)


def open_run(values: flags.FlagValues, with_data: bool = True):
  """(run, task) of --workdir at --step: the task holds the model and, with_data,
  the run's own data (registry.run_data), or says it cannot."""
  from dpm_jax import experiment, registry  # pylint: disable=g-import-not-at-top
  run, exp = registry.open_run(values.workdir, values.step)
  dataset = registry.run_data(run, exp) if with_data else experiment.empty_dataset(exp, run.config)
  return run, exp.build(run.config, dataset, run.stats)


# ----------------------------------------------------------------------------
# Training.


def define_train_flags(default_config: str) -> Callable:
  """define(values, argv) for a training program whose default config is `default_config`."""

  def define(values: flags.FlagValues, argv: Sequence[str]) -> None:
    define_cpu_devices(values)
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples). "
                        "Rerunning with the same one resumes. Default: a new "
                        "<config.output_dir>/dpm_<experiment><suffix>-<time>.", flag_values=values)
    config_flags.DEFINE_config_file(
        "config", default_config, "Experiment config file, or the name of a shipped one "
        f"({', '.join(shipped_configs())}); <file>:tiny is its seconds-long variant.",
        flag_values=values, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_bool("print_config", False, "Print the resolved config, each field with its "
                      "meaning, and exit.", flag_values=values)
    flags.DEFINE_bool("resume_verified", False, "If the newest checkpoint is corrupt, resume "
                      "from the newest one that verifies, moving the corrupt ones to "
                      "<workdir>/checkpoints_corrupt/ (default: stop with an error).",
                      flag_values=values)
  return define


def train_main(values: flags.FlagValues, program_experiment: str) -> None:
  """Trains the config's experiment, which must be the program's; for a Table 1
  experiment, then its final report."""
  config = values.config
  from dpm_jax import config as config_lib, registry, table1, train  # pylint: disable=g-import-not-at-top
  named = registry.get(registry.name_of(config)).name  # an unknown one: the closest name
  if named != program_experiment:
    raise errors.UserError(
        f"--config is a config of the {named} experiment (its config.experiment), not of "
        f"{program_experiment}: train it with `dpm-jax train {named}` (python -m "
        f"experiments.{named}), or give a {program_experiment} config (e.g. "
        f"--config={program_experiment}:tiny).")
  if values.print_config:
    from . import describe  # pylint: disable=g-import-not-at-top
    print(describe.describe(config, config_flags.get_config_filename(values["config"])))
    return
  experiment = registry.validate(config)
  use_cpu_devices(values, config.train.batch_size, configured=config.compute.cpu_devices)
  if values.cpu_devices is not None:  # the flag wins
    config.compute.cpu_devices = values.cpu_devices
  workdir = values.workdir or train.create_workdir(config)
  train.train_and_evaluate(config, workdir, resume_verified=values.resume_verified)
  if experiment.final_report:
    report = run_stoppable("the final report (rerun to make it)",
                           lambda should_stop: train.final_report(workdir, should_stop))
    print(table1.summary_line(report) + f"\nwrote {os.path.join(workdir, 'eval.json')}")


def training_program(name: str, doc: str, experiment: str) -> Program:
  """The training program of a registered experiment: its shipped config by default, and
  only configs of that experiment (another's is one line naming its own program)."""
  return Program(name, doc, define_train_flags(config_path(experiment)),
                 functools.partial(train_main, program_experiment=experiment))


def run_stoppable(what: str, fn: Callable):
  """fn(should_stop) with a stop signal turned into errors.Stopped (exit 130 / 143)."""
  from dpm_jax import safety  # pylint: disable=g-import-not-at-top
  with safety.StopSignals(what) as stop:
    stop.arm()
    try:
      return fn(stop.should_stop)
    except errors.Stopped as err:
      name = "SIGINT" if stop.requested == 2 else "SIGTERM"
      raise errors.Stopped(f"{name}: stopped {what}; nothing was written.",
                           stop.requested) from err
