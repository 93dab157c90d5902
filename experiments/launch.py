"""Shared pieces of the entry points: the training main (experiments/mnist.py,
cifar10.py) and the loading of a run directory (experiments/sample.py, evaluate.py)."""

import functools
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


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
  config_flags.DEFINE_config_file("config", default_config, "Experiment config file.",
                                  lock_config=True)
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
    print(f"error: {e}", file=sys.stderr)
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
  app.run(functools.partial(main, final_report=final_report))


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
    print(f"error: {e}", file=sys.stderr)
    _exit_now(2)
