"""Parity of the JAX model with the seed notebook's PyTorch model.

tests/fixtures/parity.npz holds, for a few small configurations, the weights
of the seed's PyTorch model (benchmarks/seed_torch.py: the seed with its
crashes fixed and the reference code's logit link) converted to the dpm_jax
parameter tree, fixed inputs and random draws, and every intermediate value of
one evaluation of the training cost. These tests recompute each value with
dpm_jax's pure functions and Flax module and compare them at float32
precision. The fixture is read with numpy only: torch is not needed here.
Regenerate it with tools/make_parity_fixture.py.

Case 'c' uses the seed's 'log' link (beta_link='log'), no dense lower pathway
and three scales; the seed's bound multiplies the KL by T
(kl_multiplier='T'), and the default 'T-1' bound is checked through its
closed-form relation to it.
"""

from __future__ import annotations

import math
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dpm_jax import config as config_lib
from dpm_jax import diffusion
from dpm_jax import schedule

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "parity.npz")
CONV_KERNELS = ("xla", "cpu")

# float32 tolerances (observed deviations are 2-10x smaller).
# TIGHT: the same formula in the same order (schedule, readout, sigma).
TIGHT = dict(rtol=2e-6, atol=1e-7)
# NET: network outputs (different matmul / convolution summation orders) and
# the forward sample (the cumulative product of 1 - beta over up to 1000 steps
# is accurate to ~1e-6 relative in float32, in either framework).
NET = dict(rtol=1e-5, atol=2e-6)
FWD = dict(rtol=1e-5, atol=5e-6)
# Per-dimension KL: a difference of O(1) terms (log sigma, sigma_q^2/sigma^2).
KL = dict(rtol=1e-5, atol=1e-5)
# The bound multiplies the one-t KL by T, so its float32 error is T times the
# KL's absolute error, per colour: allow 1e-6 nats per dimension (1.4e-3 bits
# per colour at T = 1000). Using T - 1 instead of T, or a wrong t, changes the
# bound by more than ten times that.
KL_NATS_ATOL = 1e-6


def _bound_tol(cfg):
  return dict(rtol=0.0, atol=KL_NATS_ATOL * cfg.trajectory_length * cfg.n_colors / math.log(2.0))


@pytest.fixture(scope="module")
def fixture():
  with np.load(FIXTURE, allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def _cases():
  with np.load(FIXTURE, allow_pickle=False) as npz:
    return [str(c) for c in npz["cases"]]


CASES = _cases()


def _group(fx, prefix):
  prefix = prefix.rstrip("/") + "/"
  return {k[len(prefix):]: v for k, v in fx.items() if k.startswith(prefix)}


def _py(value: np.ndarray):
  """A 0-d fixture array as the Python type the config expects."""
  value = value.item()
  return str(value) if isinstance(value, np.str_) else value


def _config(fx, case, **overrides):
  cfg = config_lib.get_model_config()
  for key, value in _group(fx, f"{case}/config").items():
    cfg[key] = _py(value)
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


def _model_and_params(fx, case, conv="xla", **overrides):
  model = diffusion.make_model(_config(fx, case, **overrides), conv)
  flat = {k: jnp.asarray(v) for k, v in _group(fx, f"{case}/params").items()}
  params = flax.traverse_util.unflatten_dict(
      {tuple(("params/" + k).split("/")): v for k, v in flat.items()})
  return model, params


def _close(actual, expected, tol, what):
  np.testing.assert_allclose(np.asarray(actual), expected, err_msg=what, **tol)


def test_fixture_is_small():
  assert os.path.getsize(FIXTURE) < 1_000_000


def test_full_size_schedule(fixture):
  s = _group(fixture, "schedule/T1000")
  basis = schedule.temporal_basis(1000, 10)
  _close(basis, s["temporal_basis"], TIGHT, "temporal basis")
  beta = schedule.beta_schedule(1000, 0.001, basis, link="logit", dtype=jnp.float32)
  _close(beta, s["beta_arr_logit"], TIGHT, "beta_arr (logit)")
  _close(schedule.alpha_cum(beta), s["alpha_cum_logit"], TIGHT, "alpha_cum")
  beta_log = schedule.beta_schedule(1000, 0.001, basis, link="log", dtype=jnp.float32)
  _close(beta_log, s["beta_arr_log"], TIGHT, "beta_arr (the seed's log link)")
  # The seed's scalar minimum beta ignores step1_beta: step1_beta = 0.
  beta_seed_min = schedule.beta_schedule(1000, 0.0, basis, link="logit", dtype=jnp.float32)
  _close(beta_seed_min, s["beta_arr_seed_min_beta"], TIGHT, "beta_arr (seed min beta)")
  # The reference code's check values.
  ref = s["beta_arr_logit"]
  assert abs(ref[0] - 0.0020) < 1e-5 and abs(ref[1] - 0.0010) < 1e-5
  assert abs(ref[-1] - 0.49999) < 1e-5
  assert abs(np.prod(1.0 - ref.astype(np.float64)) - 9.9e-4) < 1e-5


@pytest.mark.parametrize("case", CASES)
def test_param_tree_matches_init(fixture, case):
  model, params = _model_and_params(fixture, case)
  want = flax.traverse_util.flatten_dict(
      jax.eval_shape(lambda: diffusion.init_params(model, jax.random.PRNGKey(0))), sep="/")
  got = flax.traverse_util.flatten_dict(params, sep="/")
  assert sorted(got) == sorted(want), (
      f"fixture-only keys {sorted(set(got) - set(want))}, "
      f"init-only keys {sorted(set(want) - set(got))}")
  for key in want:
    assert got[key].shape == want[key].shape, (key, got[key].shape, want[key].shape)
    assert got[key].dtype == want[key].dtype, (key, got[key].dtype, want[key].dtype)


@pytest.mark.parametrize("case", CASES)
def test_schedule_and_t_weights(fixture, case):
  model, params = _model_and_params(fixture, case)
  cfg = model.config
  inp, out = _group(fixture, f"{case}/inputs"), _group(fixture, f"{case}/outputs")
  T, J = cfg.trajectory_length, cfg.n_temporal_basis

  basis = schedule.temporal_basis(T, J)
  _close(basis, out["temporal_basis"], TIGHT, "temporal basis")
  beta_arr = schedule.beta_schedule(T, cfg.step1_beta, basis, link=cfg.beta_link,
                                    dtype=jnp.float32)
  _close(beta_arr, out["beta_arr"], TIGHT, "beta_arr")
  beta_module = model.apply(params, jnp.float32, method="beta_arr")
  _close(beta_module, out["beta_arr"], TIGHT, "DiffusionModel.beta_arr")

  t = jnp.float32(inp["t"])
  _close(schedule.t_weights(t, T), out["t_weights"], dict(rtol=0, atol=0), "t_weights")
  _close(schedule.t_weights(jnp.float32(inp["t_frac"]), T), out["t_weights_frac"],
         TIGHT, "t_weights at fractional t")
  _close(schedule.at_t(beta_arr, t), out["beta_t"], TIGHT, "beta_t")
  _close(schedule.at_t(schedule.alpha_cum(beta_arr), t), out["alpha_cum_t"], TIGHT,
         "alpha_cum_t")


@pytest.mark.parametrize("case", CASES)
def test_forward_sample_and_posterior(fixture, case):
  cfg = _config(fixture, case)
  inp, out = _group(fixture, f"{case}/inputs"), _group(fixture, f"{case}/outputs")
  process = diffusion.GaussianDiffusion(jnp.asarray(out["beta_arr"]))
  t = jnp.float32(inp["t"])
  x_u = diffusion.dequantize(jnp.asarray(inp["x0"]), jnp.asarray(inp["uniform"]),
                             float(inp["uniform_noise"]))
  x_t = process.q_sample(x_u, t, jnp.asarray(inp["noise"]))
  mu_q, sigma_q = process.posterior(x_u, x_t, t)
  assert x_t.shape == inp["x0"].shape == (inp["x0"].shape[0], cfg.spatial_width,
                                          cfg.spatial_width, cfg.n_colors)
  _close(x_u, inp["x0"] + (inp["uniform"] - 0.5) * inp["uniform_noise"], TIGHT, "x_u")
  _close(x_t, out["x_t"], FWD, "x_t")
  _close(mu_q, out["mu_posterior"], FWD, "posterior mu")
  _close(sigma_q, out["sigma_posterior"], TIGHT, "posterior sigma")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("conv", CONV_KERNELS)
def test_network_readout_and_reverse_kernel(fixture, case, conv):
  model, params = _model_and_params(fixture, case, conv)
  cfg = model.config
  inp, out = _group(fixture, f"{case}/inputs"), _group(fixture, f"{case}/outputs")
  x_t, t = jnp.asarray(out["x_t"]), jnp.float32(inp["t"])

  z = model.apply(params, x_t, method="network_output")
  _close(z, out["Z"], NET, "network output Z")

  basis = schedule.temporal_basis(cfg.trajectory_length, cfg.n_temporal_basis)
  mu_coeff, beta_coeff = schedule.temporal_readout(jnp.asarray(out["Z"]), t, basis,
                                                   cfg.n_colors)
  _close(mu_coeff, out["mu_coeff"], NET, "mu_coeff")
  _close(beta_coeff, out["beta_coeff"], NET, "beta_coeff")

  mu, sigma = diffusion.reverse_kernel(
      x_t, jnp.asarray(out["mu_coeff"]), jnp.asarray(out["beta_coeff"]),
      jnp.asarray(out["beta_t"]), cfg.trajectory_length, cfg.beta_link)
  _close(mu, out["mu"], NET, "reverse mu (from the fixture's coefficients)")
  _close(sigma, out["sigma"], TIGHT, "reverse sigma (from the fixture's coefficients)")

  mu, sigma = model.apply(params, x_t, t, method="reverse")
  _close(mu, out["mu"], NET, "reverse mu")
  _close(sigma, out["sigma"], NET, "reverse sigma")


def _bound_chain(model, params, x0, t, noise, uniform, uniform_noise):
  """The training cost at given draws: the loss's own per-t KL and bound, given draws."""
  cfg = model.config
  x_u = diffusion.dequantize(x0, uniform, uniform_noise)
  kl, process = diffusion.kl_at_t(model, params, x_u, t, noise)
  bound = diffusion.bound_terms(kl, process, x_u, multiplier=diffusion.kl_multiplier(cfg),
                                unit_dims=cfg.n_colors)["loss"]
  # The same value through make_loss_fn's apply, with these draws.
  loss_fn = diffusion.make_loss_fn(model, uniform_noise=uniform_noise)
  draws = diffusion.Draws(({"noise": noise, "uniform": uniform},), ({"t": t},), (None,))
  np.testing.assert_array_equal(loss_fn.apply(params, x0, draws)[0], bound)
  return kl, bound


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("conv", CONV_KERNELS)
def test_kl_and_bound(fixture, case, conv):
  model, params = _model_and_params(fixture, case, conv)
  cfg = model.config
  assert cfg.kl_multiplier == "T" and diffusion.kl_multiplier(cfg) == cfg.trajectory_length
  inp, out = _group(fixture, f"{case}/inputs"), _group(fixture, f"{case}/outputs")

  # The KL and the bound from the fixture's own mu and sigma.
  kl = diffusion.normal_kl(jnp.asarray(out["mu_posterior"]), jnp.asarray(out["sigma_posterior"]),
                           jnp.asarray(out["mu"]), jnp.asarray(out["sigma"]))
  _close(kl, out["kl"], dict(rtol=1e-5, atol=1e-6), "KL (from the fixture's mu and sigma)")
  process = diffusion.GaussianDiffusion(jnp.asarray(out["beta_arr"]))
  bound = diffusion.bound_terms(jnp.asarray(out["kl"]), process, jnp.asarray(out["kl"]),
                                multiplier=cfg.trajectory_length, unit_dims=cfg.n_colors)["loss"]
  _close(bound, out["bound_T"], dict(rtol=1e-6, atol=0.0), "bound, KL x T (from the fixture's KL)")

  # The whole chain in JAX, from the inputs and draws.
  kl, bound = _bound_chain(model, params, jnp.asarray(inp["x0"]), jnp.float32(inp["t"]),
                              jnp.asarray(inp["noise"]), jnp.asarray(inp["uniform"]),
                              float(inp["uniform_noise"]))
  _close(kl, out["kl"], KL, "KL")
  _close(bound, out["bound_T"], _bound_tol(cfg), "bound, KL x T")

  # The default bound multiplies the KL by T-1: smaller by mean(KL) / ln 2 per colour.
  default_model, _ = _model_and_params(fixture, case, conv, kl_multiplier="T-1")
  assert diffusion.kl_multiplier(default_model.config) == cfg.trajectory_length - 1
  _, bound_default = _bound_chain(
      default_model, params, jnp.asarray(inp["x0"]), jnp.float32(inp["t"]),
      jnp.asarray(inp["noise"]), jnp.asarray(inp["uniform"]), float(inp["uniform_noise"]))
  shift = np.mean(np.asarray(kl, np.float64)) / math.log(2.0) * cfg.n_colors
  _close(bound_default, float(bound) - shift, dict(rtol=1e-6, atol=0.0),
         "bound, KL x (T-1), against the JAX bound with KL x T")
  expected = out["bound_T"] - np.mean(out["kl"].astype(np.float64)) / math.log(2.0) * cfg.n_colors
  _close(bound_default, expected, _bound_tol(cfg), "bound, KL x (T-1), against the seed's")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("conv", CONV_KERNELS)
def test_seed_cost_single_t(fixture, case, conv):
  """The seed's cost_single_t with its own random t and draws, replayed."""
  model, params = _model_and_params(fixture, case, conv)
  inp, out = _group(fixture, f"{case}/inputs"), _group(fixture, f"{case}/outputs")
  t = float(inp["t_replay"])
  assert t == int(t) and 1 <= t <= model.config.trajectory_length - 1
  _, bound = _bound_chain(model, params, jnp.asarray(inp["x0"]), jnp.float32(t),
                             jnp.asarray(inp["noise_replay"]), jnp.asarray(inp["uniform_replay"]),
                             float(inp["uniform_noise"]))
  _close(bound, out["cost_T"], _bound_tol(model.config), f"seed cost_single_t at t={t:.0f}")
