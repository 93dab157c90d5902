"""What the entry points share: flags, the config, one-line errors and exit codes.

A bad flag or an errors.UserError is one line on stderr, `error: ...`, and exit code 2;
a stop signal is one line and 130 (SIGINT) or 143 (SIGTERM); --help is exit code 0.
"""

import difflib
import logging as std_logging
import importlib.util
import os
import sys
from typing import Callable, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

from dpm_jax import config as config_lib
from dpm_jax import errors

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def shipped_configs() -> list:
  return sorted(n[:-3] for n in os.listdir(CONFIG_DIR)
                if n.endswith(".py") and not n.startswith("_"))


def resolve_config(value: str) -> str:
  """A --config value as path[:variant]: a file as given, else a shipped config's name
  ('mnist', 'mnist.py', 'configs/mnist.py')."""
  path, colon, variant = value.partition(":")
  if os.path.isfile(path):
    return value
  name = os.path.basename(path)[:-3] if path.endswith(".py") else os.path.basename(path)
  if name in shipped_configs():
    return os.path.join(CONFIG_DIR, f"{name}.py") + colon + variant
  close = difflib.get_close_matches(name, shipped_configs(), n=1, cutoff=0.5)
  raise errors.UserError(f"no config file {path!r}" + (f"; did you mean {close[0]!r}?" if close
                         else ".") + f" Shipped configs: {', '.join(shipped_configs())}.")


def _argv(argv: Sequence[str]) -> list:
  """argv with --flagfile expanded and the config named as a path (resolve_config)."""
  try:
    argv = flags.FlagValues().read_flags_from_files(list(argv), force_gnu=False)
  except flags.Error as err:
    raise errors.UserError(str(err).splitlines()[0]) from err
  out, i = [argv[0]], 1
  while i < len(argv):
    arg = argv[i]
    if arg == "--config" and i + 1 < len(argv):  # --config X
      arg, i = f"--config={argv[i + 1]}", i + 1
    if arg.startswith("--config="):
      arg = "--config=" + resolve_config(arg.split("=", 1)[1])
    out.append(arg)
    i += 1
  return out


def _unknown_field(argv: Sequence[str]) -> errors.UserError:
  """The error for the first --config.<field>=... override the config does not have."""
  value = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), "")
  path, _, variant = value.partition(":")
  spec = importlib.util.spec_from_file_location("_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  fields = [name for name, _ in config_lib.leaves(config)]
  overrides = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  name = next((o for o in overrides if o not in fields), overrides[0] if overrides else "?")
  close = difflib.get_close_matches(name, fields, n=1)
  return errors.UserError(f"the config has no field {name!r}" + (
      f" (did you mean {close[0].rsplit('.', 1)[-1]!r}, {close[0]}?)" if close else "")
      + "; --print_config lists the fields.")


def run(doc: str, define: Callable, main: Callable, argv: Sequence[str],
        default_config: str = "") -> int:
  """Runs a program in this process; returns its exit code. default_config: the config
  file of a program that has a --config flag, when argv names none."""
  values = flags.FlagValues()
  try:
    argv = _argv(argv)
    if default_config and not any(a.startswith("--config=") for a in argv):
      argv.insert(1, f"--config={default_config}")
    try:
      define(values, argv)  # a config file's flag reads its overrides from argv here
      if any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
        print(doc.strip() + "\n\nflags:")
        for name in sorted(n for n in values if values[n].name == n and "." not in n):
          print(f"  --{name}: {values[name].help}")
        return 0
      rest = values(argv)
    except (flags.UnrecognizedFlagError, KeyError, AttributeError) as err:
      if not any(a.startswith("--config.") for a in argv):
        raise
      raise _unknown_field(argv) from err
    if len(rest) > 1:
      raise errors.UserError(f"unexpected arguments {rest[1:]}; flags are --name=value.")
    main(values)
    return 0
  except flags.Error as err:  # absl's own line: "flag --name=value: ..."
    print(f"error: {str(err).splitlines()[0].removeprefix('flag ')}", file=sys.stderr, flush=True)
    return 2
  except errors.UserError as err:
    print(f"error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
    return 2
  except errors.Stopped as err:
    print(str(err), file=sys.stderr, flush=True)
    return err.code


def cli(run_program: Callable[[Sequence[str]], int]) -> None:
  """Runs a program as a command (INFO logs, without Orbax's per-save lines)."""
  from dpm_jax import rundir  # pylint: disable=g-import-not-at-top
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  rundir.quiet_orbax_logs()
  std_logging.getLogger("jax._src.xla_bridge").setLevel(std_logging.WARNING)  # absent TPUs
  flags.FLAGS.mark_as_parsed()  # libraries reading absl's global flags (grain's workers)
  sys.exit(run_program(sys.argv))


def define_cpu_devices(values: flags.FlagValues) -> None:
  flags.DEFINE_integer("cpu_devices", None, "On a CPU, the devices JAX shows, every batch split "
                       "over them: 0 one per core (as many as divide the batch), N.",
                       lower_bound=0, flag_values=values)


def show_cpu_devices(values: flags.FlagValues, *batch_sizes: int, configured: int = 0) -> None:
  """Shows JAX --cpu_devices (else `configured`, else one per core, as many as divide the
  batch sizes) CPU devices, before JAX runs anything."""
  from dpm_jax import execution  # pylint: disable=g-import-not-at-top
  count = configured if values.cpu_devices is None else values.cpu_devices
  execution.show_cpu_devices(count or None, execution.cpu_devices_for(*batch_sizes))


def define_run_flags(values: flags.FlagValues, seed_default=0, seed_help="The draws' seed.") -> None:
  flags.DEFINE_string("workdir", None, "Run directory made by a training entry point.",
                      required=True, flag_values=values)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", lower_bound=0,
                       flag_values=values)
  flags.DEFINE_integer("seed", seed_default, seed_help, lower_bound=0, flag_values=values)
  flags.DEFINE_enum("params", "ema", ["ema", "raw"], "ema: the parameters' moving average where "
                    "the run keeps one (train.ema_decay > 0), else the raw ones; raw: the "
                    "optimiser's.", flag_values=values)
  define_cpu_devices(values)


# ----------------------------------------------------------------------------
# Training.


def training_run(name: str, doc: str, argv: Sequence[str]) -> int:
  """Runs the training program of the experiment `name`: its shipped config by default,
  and only configs of that experiment; a Table 1 experiment's final report after it."""

  def define(values, argv):
    define_cpu_devices(values)
    flags.DEFINE_string("workdir", None, "Run directory; rerunning with it resumes (default: "
                        "a new one under config.output_dir).", flag_values=values)
    config_flags.DEFINE_config_file(
        "config", os.path.join(CONFIG_DIR, f"{name}.py"), "Experiment config file, or the name "
        f"of a shipped one ({', '.join(shipped_configs())}); <file>:tiny is its seconds-long "
        "variant.", flag_values=values, lock_config=True, sys_argv=list(argv))
    flags.DEFINE_bool("print_config", False, "Print the resolved config, each field with its "
                      "meaning, and exit.", flag_values=values)
    flags.DEFINE_bool("resume_verified", False, "Resume from the newest checkpoint that "
                      "verifies, moving corrupt ones to <workdir>/checkpoints_corrupt/.",
                      flag_values=values)

  def main(values):
    from dpm_jax import experiment as experiment_lib, registry, safety, table1, train  # pylint: disable=g-import-not-at-top
    config = values.config
    experiment = registry.of_config(config)  # an unknown one: the closest name
    if experiment.name != name:
      raise errors.UserError(
          f"--config is a config of the {experiment.name} experiment (its config.experiment), "
          f"not of {name}: train it with `dpm-jax train {experiment.name}` (python -m "
          f"experiments.{experiment.name}), or give a {name} config (e.g. --config={name}:tiny).")
    if values.print_config:
      print(config_lib.describe(config, experiment.help,
                                config_flags.get_config_filename(values["config"])))
      return
    experiment_lib.validate(experiment, config)
    show_cpu_devices(values, config.train.batch_size, configured=config.compute.cpu_devices)
    if values.cpu_devices is not None:  # the flag wins
      config.compute.cpu_devices = values.cpu_devices
    workdir = values.workdir or train.create_workdir(config)
    train.train_and_evaluate(experiment, config, workdir, resume_verified=values.resume_verified)
    if experiment.report_source is not None:
      report = safety.stoppable("the final report (rerun to make it)",
                                lambda should_stop: final_report(workdir, config, should_stop))
      print(table1.summary_line(report) + f"\nwrote {os.path.join(workdir, 'eval.json')}")

  return run(doc, define, main, argv, default_config=os.path.join(CONFIG_DIR, f"{name}.py"))


def final_report(workdir: str, config, should_stop=None) -> dict:
  """The final report of a finished run of a Table 1 experiment, by the program's config:
  a setting changed on resume holds to the end, also for a run that had finished."""
  from dpm_jax import execution, experiment as experiment_lib, registry, rundir  # pylint: disable=g-import-not-at-top
  run_, experiment = rundir.load_run(workdir), registry.of_config(config)
  run_.config = config  # not the checkpoint's: read and checked only to be replaced
  task = experiment_lib.build(experiment, config, experiment_lib.empty_dataset(experiment, config),
                              run_.stats)
  with execution.matmul_precision(config.compute):
    return experiment.final_report(task, run_, should_stop=should_stop)
