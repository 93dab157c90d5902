"""The paper's Table 1 experiments: what they share, and their final report."""

from __future__ import annotations

import os
import time
from typing import Callable, Mapping, Optional, Sequence

import jax
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import errors
from dpm_jax import evaluate
from dpm_jax import execution
from dpm_jax import experiment
from dpm_jax import outputs
from dpm_jax import plotting

C = config_lib
# The final report's data: its seed is offset from the run's data seeds.
REPORT_SEED_OFFSET = 10_000

DATA = C.Section(
    source=("synthetic", C.choice("synthetic"), "drawn from the experiment's generator"),
    dataset=("", C.TEXT, "the generator: the experiment's name"),
    num_train=(100000, C.integer(1), "training examples, drawn once with config.seed"),
    num_test=(1000, C.integer(2), "held-out examples of the periodic test bound"),
)
FINAL_EVAL = C.Section(
    num_examples=(2000, C.integer(2), "fresh (or held-out) examples of the final bound"),
    batch_size=(500, C.integer(1), "examples per network call"),
    seed=(1, C.integer(), "the final report's draws, apart from the training data's"),
)


class GeneratedExperiment(experiment.Experiment):
  """A Table 1 experiment whose data a generator draws (the heartbeat, the Swiss roll):
  training and test examples once with the run's seed, Adam in place of the paper's SFO
  (a quasi-Newton method optax lacks), and a final report on fresh draws.

  Args:
    model: the model section's fields.
    make_model: (model config) -> the model; validates the section.
    sample_data: (n, seed, model config) -> n examples, float32.
    write_picture: (samples (N, ...), path) -> path.
    figures: as final_report's.
    reference: (model config) -> values printed beside the paper's (the data's true log
      likelihood, or None where the data have no density).
  """
  report_source = "fresh"

  def __init__(self, name: str, description: str, unit: str, paper: Mapping[str, float], *,
               model: C.Section, make_model: Callable, sample_data: Callable,
               write_picture: Callable, figures: Callable, reference: Callable):
    self.name, self.description, self.unit, self.paper = name, description, unit, paper
    self._model, self._make_model, self._sample_data = model, make_model, sample_data
    self._write, self._figures, self._reference = write_picture, figures, reference
    self.help = C.help_of(**{"": C.TOP}, model=model, data=DATA, final_eval=FINAL_EVAL,
                          **C.SHARED)

  def default_config(self) -> ml_collections.ConfigDict:
    config = C.base_config(self.name)
    config.model = self._model.config()
    config.data = DATA.config(dataset=self.name)
    config.optimizer.update(name="adam", learning_rate=1e-2)
    config.train.update(num_epochs=0, num_steps=10000, sample_every_steps=0)
    config.final_eval = FINAL_EVAL.config()
    return config

  def validate(self, config: ml_collections.ConfigDict) -> None:
    self._make_model(config.model)
    DATA.check("data", config.data)
    if config.data.dataset != self.name:
      raise errors.UserError(f"data.dataset must be {self.name!r} for the {self.name} "
                             f"experiment, got {config.data.dataset!r}.")
    if "final_eval" not in config:
      raise errors.UserError(f"The {self.name} config has no 'final_eval' section; start from "
                             f"experiments/configs/{self.name}.py.")
    FINAL_EVAL.check("final_eval", config.final_eval)

  def make_model(self, config: ml_collections.ConfigDict):
    return self._make_model(config.model)

  def load_data(self, config: ml_collections.ConfigDict) -> data_lib.Dataset:
    d, m = config.data, config.model
    return data_lib.Dataset(self._sample_data(d.num_train, config.seed, m),
                            self._sample_data(d.num_test, config.seed + 1, m), self.name,
                            {"source": "synthetic", "dataset": self.name, "seed": config.seed})

  def write_picture(self, out: Mapping, path: str, units) -> str:
    return self._write(np.asarray(out["samples"]), path)

  def final_report(self, task, run, should_stop=None) -> dict:
    fe, m = run.config.final_eval, run.config.model
    fresh = self._sample_data(fe.num_examples, REPORT_SEED_OFFSET + fe.seed, m)
    return final_report(task, run, fresh, self._figures, reference=self._reference(m),
                        should_stop=should_stop)


def tiny_generated(config: ml_collections.ConfigDict, **model) -> ml_collections.ConfigDict:
  """A generated-data config shrunk to run in seconds on a CPU (tests, smoke runs):
  `model` updates its model section; the batch holds every t twice."""
  config.model.update(model)
  config.data.update(num_train=512, num_test=64)
  config.train.update(batch_size=2 * (config.model.trajectory_length - 1), num_steps=20,
                      log_every_steps=5, eval_every_steps=10, checkpoint_every_steps=10)
  config.eval.update(method="stratified", num_strata=5, num_images=64, batch_size=32)
  config.final_eval.update(num_examples=64, batch_size=32)
  return config


def final_report(task, run, examples: np.ndarray, figures: Callable, *,
                 reference: Optional[Mapping] = None, should_stop=None) -> dict:
  """Evaluates a finished run on `examples` by the bound exact over t (every t, Monte Carlo
  only over the forward noise); writes <workdir>/eval.json beside the paper's numbers, the
  per-t KL (kl_per_t_fresh.png, .npz) and the figures.

  Args:
    run: the run (dpm_jax.rundir.load_run).
    examples: fresh or held-out examples (the experiment's report_source).
    figures: (task, params, examples, workdir, key) -> paths of the figures written.
    reference: values to print beside the paper's (the data's true log likelihood).
    should_stop: polled between evaluation batches; a stop request raises
      errors.Stopped and nothing is written.

  Returns:
    The report written to <workdir>/eval.json.
  """
  exp, workdir, fe = task.experiment, run.workdir, run.config.final_eval
  start = time.time()
  result = evaluate.bound_all_t(task, run.params, examples, jax.random.key(fe.seed),
                                batch_size=fe.batch_size, should_stop=should_stop)
  report = evaluate.report(result)
  report.update(experiment=exp.name, step=run.step, method="all_t", source=exp.report_source,
                seconds=time.time() - start, paper=dict(exp.paper or {}),
                params=run.params_kind, matmul_precision=execution.precision_in_force(),
                **(reference or {}))
  evaluate.check_finite(report, "the final bound")
  outputs.save_npz(os.path.join(workdir, "kl_per_t_fresh.npz"), t=result["t"],
                   kl=result["kl_per_t"])
  paths = [plotting.plot_kl_per_t(result["t"], result["kl_per_t"],
                                  os.path.join(workdir, "kl_per_t_fresh.png"))]
  paths += figures(task, run.params, examples, workdir, jax.random.key(fe.seed + 1))
  report["figures"] = [os.path.relpath(path, workdir) for path in paths]
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


def write_table(rows: Sequence[Mapping], workdir: str, quick: bool = False) -> dict:
  """Writes table1.json, table1.md and table1.png into workdir from its rows' final
  reports.

  Args:
    rows: per row, its final report (eval.json) with 'run' (the row's run directory,
      relative to workdir), 'steps' and 'seconds' (its training's wall time, None if
      unknown) added.
    quick: the rows are tiny configs' (the table says so, and its files are
      table1_quick.*).

  Returns:
    {'rows': ..., 'markdown': the table}.
  """
  table = []
  for r in rows:
    paper = r.get("paper") or {}
    k, se = r["K_bits"], r["K_bits_stderr"]
    table.append(dict(
        experiment=r["experiment"], unit=r["unit"], K_bits=k, K_bits_stderr=se,
        K_minus_L_null_bits=r["K_minus_L_null_bits"], L_null_bits=r["L_null_bits"],
        paper_K_bits=paper.get("K_bits"),
        paper_K_minus_L_null_bits=paper.get("K_minus_L_null_bits"),
        K_minus_paper_in_stderr=(k - paper["K_bits"]) / se if "K_bits" in paper and se else None,
        ceiling_bits=r.get("ceiling_bits"), steps=r["steps"], seconds=r["seconds"],
        examples=r["num_images"], source=r["source"], run=r["run"]))

  def number(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"

  lines = (["Tiny configs (--quick): a smoke test, not a result.", ""] if quick else []) + [
      "| row | K | paper K | (K - paper) / s.e. | K - L_null | paper | L_null | "
      "ceiling of K | steps | training |", "|---" * 10 + "|"]
  for t in table:
    lines.append(
        f"| {t['experiment']} (bits per {t['unit']}) | {number(t['K_bits'])} +- "
        f"{number(t['K_bits_stderr'])} | {number(t['paper_K_bits'])} | "
        f"{number(t['K_minus_paper_in_stderr'], 1)} | {number(t['K_minus_L_null_bits'])} | "
        f"{number(t['paper_K_minus_L_null_bits'])} | {number(t['L_null_bits'])} | "
        f"{number(t['ceiling_bits'])} | {t['steps']} | "
        + ("-" if t["seconds"] is None else f"{t['seconds'] / 60:.1f} min") + " |")
  markdown = "\n".join(lines) + "\n"
  stem = os.path.join(workdir, "table1_quick" if quick else "table1")
  outputs.write_json(stem + ".json", {"rows": table, "quick": quick})
  outputs.write_text(stem + ".md", markdown)
  figures = [next(os.path.join(workdir, r["run"], p) for p in r["figures"] if "kl_per_t" not in p)
             for r in rows]  # each row's own figure: its samples beside its data
  titles = [f"{r['experiment']}: {os.path.basename(p)}" for r, p in zip(rows, figures)]
  plotting.save_pictures(figures, titles, stem + ".png")
  return {"rows": table, "markdown": markdown}
