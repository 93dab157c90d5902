"""Shared pieces of the entry points: running an absl program (help, flag errors),
the training main (experiments/mnist.py, cifar10.py, heartbeat.py, swiss_roll.py)
and the loading of a run directory (experiments/sample.py, evaluate.py)."""

import functools
import logging as std_logging
import os
import re
import sys
import textwrap

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--help=true")


def config_path(name: str) -> str:
  """The path of a config shipped with the package: 'mnist' -> .../configs/mnist.py."""
  return os.path.join(CONFIG_DIR, f"{name}.py")


def _resolve_config_names(argv):
  """--config=mnist (a bare name) means the shipped experiments/configs/mnist.py."""
  out = []
  for arg in argv:
    name = arg[len("--config="):] if arg.startswith("--config=") else None
    if name and "/" not in name and not name.endswith(".py") and os.path.exists(config_path(name)):
      arg = "--config=" + config_path(name)
    out.append(arg)
  return out


def print_help() -> None:
  """The main module's description and the flags of this program, on stdout."""
  main = sys.modules["__main__"]
  print((main.__doc__ or "").strip() + "\n")
  print("flags:")
  for module, module_flags in sorted(FLAGS.flags_by_module_dict().items()):
    if "experiments" in module:
      for flag in sorted(module_flags, key=lambda f: f.name):
        default = "" if flag.default is None else f" (default: {flag.default_as_str})"
        print(f"  --{flag.name}")
        print(textwrap.fill(flag.help + default, 80, initial_indent=" " * 6, break_on_hyphens=False,
                            subsequent_indent=" " * 6))
  if "config" in FLAGS:
    print("\nThe config: --print_config lists every field, its value and meaning; "
          "--config.<section>.<field>=<value> sets one (e.g. --config.train.num_steps=200).")
  print("All flags, JAX's and absl's too: --helpfull.")


def _parse_flags(argv):
  """absl's flag parsing, with a short error for an unknown config field."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --help to see the flags.\n")
  except (AttributeError, KeyError) as e:  # --config.<unknown field>=...
    hint = re.search(r'Did you mean "[\w.]+" instead of "[\w.]+"\?', str(e))
    field = re.search(r"[\w.]+", str(e))
    sys.stderr.write(f"error: the config has no field {field.group(0) if field else str(e)!r}"
                     f"{'; ' + hint.group(0) if hint else ''}\n"
                     "List the fields with --print_config.\n")
  sys.exit(1)


def app_run(main) -> None:
  """absl's app.run, but --help exits 0 listing this program's flags, --config may
  name a shipped config, and a mistyped config field is one line, not a traceback."""
  argv = _resolve_config_names(sys.argv)
  if any(arg in HELP_ARGS for arg in argv[1:]):
    try:
      print_help()
    except BrokenPipeError:  # | head
      pass
    sys.exit(0)
  sys.argv = argv
  app.run(main, flags_parser=_parse_flags)


def define_cpu_devices_flag() -> None:
  flags.DEFINE_integer(
      "cpu_devices", None, "When JAX runs on the CPU: the CPU devices it shows, the batch split "
      "over them. 0: one per core, as many as divide the batch; 1: a single device "
      "(ops multi-threaded one at a time). No effect on GPUs and TPUs. Default: "
      "config.compute.cpu_devices when training, else 0.")


def use_cpu_devices(*batch_sizes: int, configured: int = 0) -> None:
  """Shows JAX --cpu_devices (else `configured`) CPU devices, before JAX runs anything."""
  from dpm_jax import parallel  # pylint: disable=g-import-not-at-top
  count = configured if FLAGS.cpu_devices is None else FLAGS.cpu_devices
  if count < 0:
    raise app.UsageError(f"cpu_devices={count}: use 0 (one per core) or a positive count.")
  parallel.use_cpu_devices(count or parallel.cpu_devices_for(*batch_sizes))


def define_flags(default_config: str) -> None:
  define_cpu_devices_flag()
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples). "
                      "Rerunning with the same one resumes. Default: a new "
                      "<config.output_dir>/dpm_<dataset><suffix>-<time>.")
  config_flags.DEFINE_config_file(
      "config", default_config, "Experiment config file, or the name of a shipped one (mnist, "
      "cifar10, heartbeat, swiss_roll, test).", lock_config=True)
  flags.DEFINE_bool("print_config", False, "Print the resolved config, each field with its "
                    "meaning, and exit.")
  flags.DEFINE_bool("resume_verified", False, "If the newest checkpoint is corrupt, resume from "
                    "the newest one that verifies, moving the corrupt ones to "
                    "<workdir>/checkpoints_corrupt/ (default: stop with an error).")


def _quiet_logs() -> None:
  """INFO logging, without Orbax's per-save lines or JAX's probe for absent TPUs."""
  from dpm_jax import rundir  # pylint: disable=g-import-not-at-top
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


def main(argv, final_report: bool = False) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.print_config:
    from experiments import describe  # pylint: disable=g-import-not-at-top
    print(describe.describe(FLAGS.config, config_flags.get_config_filename(FLAGS["config"])))
    return
  # Imported here so that --help stays fast.
  from dpm_jax import config as config_lib, data, rundir, train  # pylint: disable=g-import-not-at-top
  _quiet_logs()
  try:
    use_cpu_devices(FLAGS.config.train.batch_size, configured=FLAGS.config.compute.cpu_devices)
    workdir = FLAGS.workdir or train.create_workdir(FLAGS.config)
    train.train_and_evaluate(FLAGS.config, workdir, resume_verified=FLAGS.resume_verified)
    if final_report:
      from dpm_jax import table1  # pylint: disable=g-import-not-at-top
      report = table1.final_report(workdir)
      print(table1.summary_line(report) + f"\nwrote {os.path.join(workdir, 'eval.json')}")
  except train.TrainingInterrupted as e:
    logging.warning("%s", e)
    _exit_now(143)
  except (config_lib.ConfigError, data.DataError, rundir.CheckpointError, rundir.RunDirError,
          train.NonFiniteLossError) as e:
    fail(str(e))


def fail(message: str) -> None:
  """One line on stderr, exit code 2."""
  print(f"error: {message}", file=sys.stderr)
  _exit_now(2)


def _exit_now(code: int) -> None:
  """Exits at once: an abandoned evaluation's thread or a failed background save
  must not delay the exit or print tracebacks while the interpreter shuts down.
  Everything the run keeps is on disk by now."""
  sys.stdout.flush()
  sys.stderr.flush()
  std_logging.shutdown()
  os._exit(code)


def run(default_config: str, final_report: bool = False) -> None:
  define_flags(default_config)
  app_run(functools.partial(main, final_report=final_report))


def open_run(workdir: str, step=None, with_data: bool = True):
  """(run, task) of a run directory; exits with one line saying what is wrong if it
  cannot be loaded (exit code 2).

  The task (dpm_jax.tasks) holds the model and, with_data, the run's data.
  """
  from dpm_jax import data, rundir, tasks  # pylint: disable=g-import-not-at-top
  _quiet_logs()
  try:
    run = rundir.load_run(workdir, step)
    dataset = tasks.load_data(run.config) if with_data else tasks.no_data(run.config)
    return run, tasks.build(run.config, dataset, run.stats)
  except (rundir.CheckpointError, data.DataError) as e:
    fail(str(e))
