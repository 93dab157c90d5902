"""Shared absl main for the training entry points (experiments/mnist.py, cifar10.py)."""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags(default_config: str) -> None:
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, samples). "
                      "Rerunning with the same one resumes. Default: a new "
                      "<config.output_dir>/dpm_<dataset><suffix>-<time>.")
  config_flags.DEFINE_config_file("config", default_config, "Experiment config file.",
                                  lock_config=True)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  # Imported here so that --help stays fast.
  from dpm_jax import checkpoints, config as config_lib, data, train  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.INFO)
  checkpoints.quiet_orbax_logs()
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except train.TrainingInterrupted as e:
    logging.warning("%s", e)
    sys.exit(143)
  except (config_lib.ConfigError, data.DataError, checkpoints.CheckpointError,
          train.NonFiniteLossError) as e:
    logging.error("%s: %s", type(e).__name__, e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def run(default_config: str) -> None:
  define_flags(default_config)
  app.run(main)
