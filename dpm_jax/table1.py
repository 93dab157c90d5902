"""The paper's Table 1 experiments: data drawn from a generator, and the final report.

Their data (the heartbeat, the Swiss roll) are drawn from a known
distribution: training and test examples once with the run's seed, and the
final report's examples afresh. After training, the report evaluates the
bound exact over t (every t, Monte Carlo only over the forward noise) on
those fresh examples and writes <workdir>/eval.json beside the paper's
numbers, the per-t KL (kl_per_t_fresh.png, .npz) and the experiment's figures.
"""

from __future__ import annotations

import abc
import os
import time

import jax
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import errors
from dpm_jax import evaluate
from dpm_jax import experiment
from dpm_jax import outputs
from dpm_jax import plotting
from dpm_jax import rundir

# The final report's data: its seed is offset from the run's data seeds.
REPORT_SEED_OFFSET = 10_000
DATA_DOMAINS = {"source": config_lib.choice("synthetic"), "dataset": config_lib.TEXT,
                "num_train": config_lib.integer(1), "num_test": config_lib.integer(2)}
FINAL_DOMAINS = {"num_examples": config_lib.integer(2), "batch_size": config_lib.integer(1),
                 "seed": config_lib.integer()}


class GeneratedDataExperiment(experiment.Experiment):
  """An experiment whose data come from a generator (paper Table 1): no stored files,
  no dequantisation, and a final report on fresh draws."""
  final_report = True

  @abc.abstractmethod
  def model_config(self) -> ml_collections.ConfigDict:
    """The model section."""

  @abc.abstractmethod
  def validate_model(self, cfg: ml_collections.ConfigDict) -> None:
    """Checks the model section; raises errors.UserError."""

  @abc.abstractmethod
  def sample_data(self, config: ml_collections.ConfigDict, n: int, seed: int) -> np.ndarray:
    """n examples (n, ...) float32, a function of (seed, config.model) alone."""

  @abc.abstractmethod
  def tiny_model(self, cfg: ml_collections.ConfigDict) -> None:
    """Shrinks the model section in place for tiny_config."""

  def tiny_config(self) -> ml_collections.ConfigDict:
    config = self.default_config()
    self.tiny_model(config.model)
    config.data.update(num_train=512, num_test=64)
    config.train.update(batch_size=2 * (config.model.trajectory_length - 1), num_steps=20,
                        log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=10)
    config.eval.update(method="stratified", num_strata=5, num_images=64, batch_size=32)
    config.final_eval.update(num_examples=64, batch_size=32)
    return config

  def default_config(self) -> ml_collections.ConfigDict:
    """The defaults the Table 1 experiments share: fresh synthetic data instead of
    images, Adam in place of the paper's SFO (a quasi-Newton method optax lacks),
    one CPU device for a small model, and the final bound on fresh draws."""
    config = config_lib.base_config()
    config.experiment = self.name
    config.model = self.model_config()
    config.data = data = ml_collections.ConfigDict()
    data.source = "synthetic"       # drawn from the experiment's generator
    data.dataset = self.name        # the generator
    data.num_train = 100000         # training examples, drawn once with config.seed
    data.num_test = 1000            # held-out examples for the periodic test bound
    config.optimizer.update(name="adam", learning_rate=1e-2)
    config.compute.cpu_devices = 1  # a small model: one device wastes nothing
    config.train.num_epochs = 0
    config.train.num_steps = 10000
    config.train.sample_every_steps = 0  # the final report draws the samples
    # The final report's bound (dpm_jax.table1): fresh examples, every t.
    config.final_eval = final = ml_collections.ConfigDict()
    final.num_examples = 2000       # fresh examples from the data distribution
    final.batch_size = 500          # examples per network call
    final.seed = 1                  # their draws, apart from the training data's
    return config

  def validate(self, config: ml_collections.ConfigDict) -> None:
    self.validate_model(config.model)
    config_lib.check_fields("data", config.data, DATA_DOMAINS)
    if config.data.dataset != self.name:
      raise errors.UserError(
          f"data.dataset must be {self.name!r} for the {self.name} experiment, got "
          f"{config.data.dataset!r}.")
    if "final_eval" not in config:
      raise errors.UserError(f"The {self.name} config has no 'final_eval' section; start "
                                   f"from experiments/configs/{self.name}.py.")
    config_lib.check_fields("final_eval", config.final_eval, FINAL_DOMAINS)

  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    d = config.data
    return data_lib.Dataset(
        self.sample_data(config, d.num_train, config.seed),
        self.sample_data(config, d.num_test, config.seed + 1), self.name,
        {"source": "synthetic", "dataset": self.name, "seed": config.seed})

  def report_data(self, config: ml_collections.ConfigDict, num: int, seed: int) -> np.ndarray:
    return self.sample_data(config, num, REPORT_SEED_OFFSET + seed)


def final_report(task: experiment.Experiment, run: rundir.Run, *, should_stop=None) -> dict:
  """Evaluates a finished run on fresh data; writes eval.json, the per-t KL and the figures.

  Args:
    task: the run's Task (dpm_jax.experiment), its model and stats.
    run: the run (dpm_jax.rundir.load_run).
    should_stop: polled between evaluation batches; a stop request raises
      errors.Stopped and nothing is written.

  Returns:
    The report written to <workdir>/eval.json.
  """
  exp, config, workdir = task.experiment, run.config, run.workdir
  fe = config.final_eval
  fresh = exp.report_data(config, fe.num_examples, fe.seed)
  start = time.time()
  result = evaluate.bound_all_t(task, run.params, fresh, jax.random.key(fe.seed),
                                batch_size=fe.batch_size, should_stop=should_stop)
  report = evaluate.report(result)
  report.update(experiment=exp.name, step=run.step, method="all_t", source=exp.report_source,
                seconds=time.time() - start, paper=dict(exp.paper or {}),
                **exp.reference_values(config))
  evaluate.check_finite(report, "the final bound")
  outputs.save_npz(os.path.join(workdir, "kl_per_t_fresh.npz"), t=result["t"],
                   kl=result["kl_per_t"])
  figures = [plotting.plot_kl_per_t(result["t"], result["kl_per_t"],
                                    os.path.join(workdir, "kl_per_t_fresh.png"))]
  figures += exp.figures(task, run.params, fresh, workdir, jax.random.key(fe.seed + 1))
  report["figures"] = [os.path.relpath(path, workdir) for path in figures]
  outputs.write_json(os.path.join(workdir, "eval.json"), report)
  return report


def summary_line(report: dict) -> str:
  paper = report.get("paper") or {}
  line = (f"{report['experiment']}: K = {report['K_bits']:.3f} +- {report['K_bits_stderr']:.3f} "
          f"bits per {report['unit']} (paper {paper.get('K_bits', '-')}), K - L_null = "
          f"{report['K_minus_L_null_bits']:.3f} (paper {paper.get('K_minus_L_null_bits', '-')}), "
          f"L_null = {report['L_null_bits']:.3f}")
  true_ll = report.get("true_log_likelihood_bits")
  if true_ll is not None:
    line += f"; the data's true log likelihood {true_ll:.3f}"
  return line + f"; {report['num_images']} {report['source'].replace('_', '-')} examples"
