"""The paper's Table 1 experiments: the Swiss roll model, and short runs of both entry configs."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dpm_jax import diffusion, execution, swiss_roll
from dpm_jax import experiment as experiment_lib
from dpm_jax.kernels import readout
from experiments.configs import heartbeat as heartbeat_config


def test_swiss_roll_data_is_scaled_to_unit_variance():
  cfg = swiss_roll.model_config()
  x = swiss_roll.sample_data(200_000, 0, cfg)
  assert x.shape == (200_000, 2) and x.dtype == np.float32
  np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.01)
  assert np.mean(np.sum(x**2, axis=1)) == pytest.approx(2.0, rel=0.01)
  np.testing.assert_array_equal(x[:100], swiss_roll.sample_data(200_000, 0, cfg)[:100])


@pytest.mark.slow
def test_swiss_roll_true_log_likelihood_against_monte_carlo_on_a_wide_roll():
  """With a wide noise the numerical mixture density is the Monte Carlo density."""
  cfg = swiss_roll.model_config()
  cfg.noise_std = 3.0
  ll = swiss_roll.true_log_likelihood_bits(cfg, n_points=2000, n_theta=2000)
  mean, scale = swiss_roll._moments(3.0)  # pylint: disable=protected-access
  x = swiss_roll.sample_data(2000, 2024, cfg).astype(np.float64) * scale + mean
  rng = np.random.default_rng(1)
  theta = swiss_roll.THETA_RANGE[0] + np.diff(swiss_roll.THETA_RANGE)[0] * rng.random(20000)
  c = np.stack([theta * np.cos(theta), theta * np.sin(theta)], 1)
  d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
  dens = np.mean(np.exp(-d2 / 18.0), axis=1) / (2 * math.pi * 9.0)
  mc = np.mean(np.log2(dens * scale**2))
  assert ll == pytest.approx(mc, abs=0.02)


def test_heartbeat_config_trains_on_stratified_batches_read_out_in_blocks():
  """The default batch covers every t equally and is read out in blocks
  (dpm_jax.kernels.readout): T-1 divides the batch, and a model
  without convolutions takes it whole (no micro-batches), with nothing switched off
  in the config."""
  from dpm_jax import heartbeat, registry  # pylint: disable=g-import-not-at-top
  config = heartbeat_config.get_config()
  experiment_lib.validate(registry.of_config(config), config)
  T, batch = config.model.trajectory_length, config.train.batch_size
  assert config.model.t_sampling == "stratified" and batch % (T - 1) == 0
  assert config.compute.micro_batch_size == -1
  model = heartbeat.make_model(config.model)
  assert execution.micro_batch_size(config.compute.micro_batch_size, batch, 1, model) == 0
  assert readout.reads_in_blocks(batch, T)


def small_swiss_roll(**overrides):
  cfg = swiss_roll.model_config()
  cfg.trajectory_length = 10
  for k, v in overrides.items():
    cfg[k] = v
  model = swiss_roll.make_model(cfg)
  return model, diffusion.init_params(model, jax.random.key(0))


@pytest.mark.slow
def test_swiss_roll_schedule_fixes_beta_1_and_learns_the_rest():
  model, params = small_swiss_roll()
  beta = np.asarray(model.apply(params, method="beta_arr"))
  assert beta[0] == pytest.approx(1e-6) and np.all((beta > 0) & (beta < 1))
  np.testing.assert_allclose(beta[1:], 1 / np.linspace(10, 2, 10)[1:], rtol=1e-5)
  x = jnp.asarray(swiss_roll.sample_data(64, 0))
  grads = jax.jit(jax.grad(lambda p: diffusion.make_loss_fn(model)(p, x, jax.random.key(1))[0]))(
      params)
  assert np.any(np.asarray(grads["params"]["beta_logits"]) != 0)
  fixed, fixed_params = small_swiss_roll(learn_beta=False)
  assert "beta_logits" not in fixed_params["params"]
  np.testing.assert_allclose(fixed.apply(fixed_params, method="beta_arr"), beta, rtol=1e-6)


def test_check_grads_swiss_roll_network_and_loss_float64():
  with jax.enable_x64(True):
    model, params = small_swiss_roll()
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                          + 0.1 * jax.random.normal(jax.random.key(2), a.shape, jnp.float64),
                          params)
    x = jnp.asarray(swiss_roll.sample_data(5, 1), jnp.float64)
    t = jnp.asarray([1.0, 3.0, 5.0, 7.0, 9.0])
    f = lambda p: jnp.sum(jnp.concatenate(model.apply(p, x, t, method="reverse")))
    check_grads(jax.jit(f), (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)
    loss_fn = diffusion.make_loss_fn(model)
    g = lambda p: loss_fn(p, x, jax.random.key(4))[0]
    check_grads(jax.jit(g), (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


@pytest.mark.slow
def test_the_table_1_command_writes_the_table_and_reuses_finished_rows(tmp_path):
  from experiments import cli  # pylint: disable=g-import-not-at-top
  args = ["table1", f"--workdir={tmp_path}", "--quick", "--rows=heartbeat,swiss_roll"]
  assert cli.main(args) == 0
  rows = json.loads((tmp_path / "table1_quick.json").read_text())["rows"]
  assert [r["experiment"] for r in rows] == ["heartbeat", "swiss_roll"]
  for r in rows:
    assert r["K_bits"] == pytest.approx(r["L_null_bits"] + r["K_minus_L_null_bits"])
    assert r["K_minus_paper_in_stderr"] == pytest.approx(
        (r["K_bits"] - r["paper_K_bits"]) / r["K_bits_stderr"])
    assert r["K_bits"] <= r["ceiling_bits"] + 5 * r["K_bits_stderr"] and r["steps"] == 20
    assert r["seconds"] > 0
  assert rows[0]["ceiling_bits"] == pytest.approx(-math.log2(5))  # the data's entropy
  table = (tmp_path / "table1_quick.md").read_text()
  assert table.startswith("Tiny configs (--quick): a smoke test, not a result.")
  assert table.count("\n") == 6 and "| swiss_roll (bits per point) |" in table
  assert (tmp_path / "table1_quick.png").stat().st_size > 10000
  report = tmp_path / "heartbeat_quick" / "eval.json"
  before = report.stat().st_mtime_ns
  assert cli.main(args) == 0  # finished rows: reused, not evaluated again
  assert report.stat().st_mtime_ns == before
  assert json.loads((tmp_path / "table1_quick.json").read_text())["rows"] == rows
  assert cli.main(["table1", f"--workdir={tmp_path}", "--rows="]) == 2
