"""The paper's Table 1 experiments: the final bound on fresh data, and their figures.

After training, the bound is evaluated exact over t (every t, Monte Carlo
only over the forward noise) on examples drawn afresh from the data
distribution, and written to <workdir>/eval.json beside the paper's numbers.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from dpm_jax import evaluate
from dpm_jax import plotting
from dpm_jax import rundir
from dpm_jax import sampling
from dpm_jax import tasks

# arXiv 1503.03585 v8, Table 1: K and K - L_null, bits per sequence or point.
PAPER = {"heartbeat": {"K_bits": -2.414, "K_minus_L_null_bits": 12.024},
         "swiss_roll": {"K_bits": 2.35, "K_minus_L_null_bits": 6.45}}


def final_report(workdir: str) -> dict:
  """Evaluates a finished run on fresh data; writes eval.json and the figures."""
  run = rundir.load_run(workdir)
  config, name = run.config, run.config.data.dataset
  module = tasks.synthetic_module(name)
  task = tasks.build(config, tasks.no_data(config))
  fe = config.final_eval
  fresh = module.sample_data(fe.num_examples, 10_000 + fe.seed, config.model)
  start = time.time()
  result = evaluate.bound_all_t(task, run.params, fresh, jax.random.key(fe.seed),
                                batch_size=fe.batch_size)
  report = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
  report.update(dataset=name, step=run.step, method="all_t", seconds=time.time() - start,
                paper=PAPER[name], true_log_likelihood_bits=module.true_log_likelihood_bits(
                    config.model))
  rundir.write_json(os.path.join(workdir, "eval.json"), report)
  np.savez(os.path.join(workdir, "kl_per_t.npz"), t=result["t"], kl=result["kl_per_t"])
  plotting.plot_kl_per_t(result["t"], result["kl_per_t"], os.path.join(workdir, "kl_per_t.png"))
  module.figures(task, run.params, fresh, workdir, jax.random.key(fe.seed + 1))
  return report


def summary_line(report: dict) -> str:
  paper = report["paper"]
  return (f"{report['dataset']}: K = {report['K_bits']:.3f} +- {report['K_bits_stderr']:.3f} "
          f"bits per {report['unit']} (paper {paper['K_bits']}), K - L_null = "
          f"{report['K_minus_L_null_bits']:.3f} (paper {paper['K_minus_L_null_bits']}), "
          f"L_null = {report['L_null_bits']:.3f}; the data's true log likelihood "
          f"{report['true_log_likelihood_bits']:.3f}; {report['num_images']} fresh examples")


def draw_samples(task, params, num: int, key, record_t=()):
  return sampling.make_sampler(task.model, num_images=num, record_t=record_t)(params, key)
