"""The forward process, posterior, reverse kernel, KL and bound: closed forms and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from conftest import tiny_model_config
from dpm_jax import diffusion, parallel, schedule


def isotropic_params(params):
  """Zeroes the last layer of the upper MLP: mu_coeff = 0 and beta_rev = beta_t."""
  params = jax.tree.map(lambda x: x, params)
  upper = params["params"]["network"]["mlp_dense_upper"]
  last = sorted(upper)[-1]
  upper[last] = jax.tree.map(jnp.zeros_like, upper[last])
  return params


def test_posterior_matches_direct_bayes_on_a_grid():
  # x_{t-1} | x_u ~ N(sqrt(abar_{t-1}) x_u, 1 - abar_{t-1}); x_t | x_{t-1} ~ N(sqrt(a_t) x_{t-1}, b_t).
  beta = np.asarray(schedule.beta_schedule(100, 1e-3, schedule.temporal_basis(100, 10)), np.float64)
  abar = np.cumprod(1 - beta)
  for t in (1, 7, 60, 99):
    x_u, x_t = 0.7, -0.3
    grid = np.linspace(-8, 8, 400001)
    log_prior = -(grid - np.sqrt(abar[t - 1]) * x_u) ** 2 / (2 * (1 - abar[t - 1]))
    log_lik = -(x_t - np.sqrt(1 - beta[t]) * grid) ** 2 / (2 * beta[t])
    w = np.exp(log_prior + log_lik - np.max(log_prior + log_lik))
    w /= w.sum()
    mean = np.sum(w * grid)
    std = np.sqrt(np.sum(w * (grid - mean) ** 2))
    mu, sigma = diffusion.posterior(x_u, x_t, beta[t], abar[t])
    np.testing.assert_allclose(mu, mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(sigma, std, rtol=1e-4)


def test_kl_against_monte_carlo():
  rng = np.random.default_rng(0)
  mu_q, s_q, mu_p, s_p = 0.3, 0.5, -0.2, 0.8
  x = mu_q + s_q * rng.normal(size=2_000_000)
  log_q = -0.5 * ((x - mu_q) / s_q) ** 2 - np.log(s_q)
  log_p = -0.5 * ((x - mu_p) / s_p) ** 2 - np.log(s_p)
  mc = np.mean(log_q - log_p)
  stderr = np.std(log_q - log_p) / np.sqrt(x.size)
  kl = float(diffusion.normal_kl(mu_q, s_q, mu_p, s_p))
  assert abs(kl - mc) < 4 * stderr
  assert float(diffusion.normal_kl(1.0, 2.0, 1.0, 2.0)) == pytest.approx(0.0, abs=1e-7)


def expected_isotropic_kl(beta):
  """E[KL_t] over unit-variance data for the isotropic reverse model, t = 1 .. T-1."""
  kls = []
  abar = schedule.alpha_cum(beta)
  for t in range(1, beta.shape[0]):
    process = diffusion.GaussianDiffusion(beta)
    def mean_gap(x_u, n):
      x_u, tt = jnp.asarray(x_u), jnp.asarray(float(t))
      x_t = process.q_sample(x_u, tt, jnp.asarray(n))
      mu_q, _ = process.posterior(x_u, x_t, tt)
      mu_p, _ = diffusion.reverse_kernel(x_t, 0.0, 0.0, beta[t], beta.shape[0])
      return mu_q - mu_p
    a, b = mean_gap(1.0, 0.0), mean_gap(0.0, 1.0)  # the gap is linear in (x_u, n)
    _, s_q = diffusion.posterior(0.0, 0.0, beta[t], abar[t])
    s_p = jnp.sqrt(beta[t])
    kls.append(jnp.log(s_p / s_q) + (s_q**2 + a**2 + b**2) / (2 * s_p**2) - 0.5)
  return jnp.stack(kls)


def test_isotropic_model_bound_is_exactly_zero_in_expectation():
  with jax.enable_x64(True):
    T = 200
    beta = schedule.beta_schedule(T, 1e-3, schedule.temporal_basis(T, 10), dtype=jnp.float64)
    kl = jnp.mean(expected_isotropic_kl(beta))
    process, x = diffusion.GaussianDiffusion(beta), jnp.zeros((1, 1))
    terms = diffusion.bound_terms(kl, process, x, multiplier=T - 1, unit_dims=1)
    assert abs(float(terms["loss"])) < 1e-9
    # The reference code's multiplier T is pessimistic by E[KL] / ln 2.
    terms_t = diffusion.bound_terms(kl, process, x, multiplier=T, unit_dims=1)
    np.testing.assert_allclose(terms_t["loss"] - terms["loss"], kl / math.log(2), rtol=1e-9)
    assert float(terms_t["loss"]) > 0


@pytest.mark.slow
def test_isotropic_model_bound_is_zero_within_sampling_error():
  cfg = tiny_model_config(t_sampling="per_example", trajectory_length=100, n_temporal_basis=5)
  model = diffusion.make_model(cfg)
  params = isotropic_params(diffusion.init_params(model, jax.random.key(0)))
  loss_fn = jax.jit(diffusion.make_loss_fn(model))
  data_rng = jax.random.key(1)
  losses = []
  for i in range(40):
    x = jax.random.normal(jax.random.fold_in(data_rng, i), (256, 8, 8, 1))
    losses.append(float(loss_fn(params, x, jax.random.key(100 + i))[0]))
  mean, stderr = np.mean(losses), np.std(losses, ddof=1) / np.sqrt(len(losses))
  assert abs(mean) < 4 * stderr, (mean, stderr)
  assert stderr < 0.1  # sensitive to a bias of a few tenths of a bit


def test_loss_is_deterministic_and_uses_the_key():
  model = diffusion.make_model(tiny_model_config())
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  loss_fn = jax.jit(diffusion.make_loss_fn(model, uniform_noise=0.1))
  a, metrics = loss_fn(params, x, jax.random.key(2))
  b, _ = loss_fn(params, x, jax.random.key(2))
  c, _ = loss_fn(params, x, jax.random.key(3))
  assert float(a) == float(b)
  assert float(a) != float(c)
  assert set(metrics) == {"loss", "kl", "H_start", "H_end", "H_prior", "L_null", "K",
                          "kl_nats", "t_mean"}
  assert 1 <= float(metrics["t_mean"]) <= 19


def test_loss_reports_the_terms_of_the_bound():
  """loss = -(K - L_null) = kl + H_start - H_end + H_prior + L_null, each term by its formula."""
  cfg = tiny_model_config(n_colors=3)
  model = diffusion.make_model(cfg)
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  loss, m = jax.jit(diffusion.make_loss_fn(model))(params, x, jax.random.key(2))
  beta = np.asarray(model.apply(params, method="beta_arr"), np.float64)
  h = lambda v: 0.5 * (1 + math.log(2 * math.pi)) + 0.5 * math.log(v)
  bits = 3 / math.log(2)  # per pixel: three colour channels, nats -> bits
  np.testing.assert_allclose(m["H_start"], h(beta[0]) * bits, rtol=1e-5)
  np.testing.assert_allclose(m["H_end"], h(1 - np.prod(1 - beta)) * bits, rtol=1e-5)
  np.testing.assert_allclose(m["H_prior"], h(1.0) * bits, rtol=1e-6)
  np.testing.assert_allclose(m["L_null"], -m["H_prior"], rtol=1e-6)
  np.testing.assert_allclose(m["kl"], m["kl_nats"] * (cfg.trajectory_length - 1) * bits, rtol=1e-5)
  np.testing.assert_allclose(loss, m["kl"] + m["H_start"] - m["H_end"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(m["K"], m["L_null"] - loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 3), (4, 6, 2)])
def test_gaussian_process_on_any_data_shape(shape):
  """Forward sample, posterior and KL broadcast per-example t over any data shape."""
  beta = schedule.beta_schedule(30, 1e-3, schedule.temporal_basis(30, 5))
  process = diffusion.GaussianDiffusion(beta)
  x_0 = jax.random.normal(jax.random.key(0), shape)
  noise = jax.random.normal(jax.random.key(1), shape)
  t = jnp.arange(1, shape[0] + 1).astype(jnp.float32) * 5
  x_t, (mu, sigma) = jax.jit(lambda x_0, t, noise: (
      process.q_sample(x_0, t, noise),
      process.posterior(x_0, process.q_sample(x_0, t, noise), t)))(x_0, t, noise)
  abar = np.cumprod(1 - np.asarray(beta, np.float64))
  for i in range(shape[0]):
    ti = int(t[i])
    np.testing.assert_allclose(x_t[i], np.sqrt(abar[ti]) * x_0[i] + np.sqrt(1 - abar[ti]) * noise[i],
                               rtol=1e-5, atol=1e-6)
    mu_i, sigma_i = diffusion.posterior(x_0[i], x_t[i], beta[ti], abar[ti])
    np.testing.assert_allclose(mu[i], mu_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.broadcast_to(sigma, shape)[i], sigma_i, rtol=1e-5)
  assert process.kl((mu, sigma), (mu, sigma)).shape == shape


@pytest.mark.slow
def test_n_t_per_minibatch_averages_independent_draws():
  model = diffusion.make_model(tiny_model_config(n_t_per_minibatch=3))
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  loss3, m3 = jax.jit(diffusion.make_loss_fn(model))(params, x, jax.random.key(5))
  single = jax.jit(diffusion.make_loss_fn(diffusion.make_model(tiny_model_config())))
  keys = jax.random.split(jax.random.key(5), 3)
  ones = [single(params, x, k)[0] for k in keys]
  # The draws' losses (about +0.7, 0, -0.7 here) nearly cancel in their mean: float32
  # rounding is relative to the terms, not to the mean.
  np.testing.assert_allclose(loss3, np.mean(ones), rtol=0, atol=1e-6 * np.max(np.abs(ones)))


def test_per_example_t_equals_per_minibatch_t_when_all_equal():
  cfg = tiny_model_config()
  model = diffusion.make_model(cfg)
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
  reverse = jax.jit(lambda p, x, t: model.apply(p, x, t, method="reverse"))
  mu1, s1 = reverse(params, x, jnp.asarray(7.0))
  mu2, s2 = reverse(params, x, jnp.full((3,), 7.0))
  # The per-example readout sums in another order: float32 rounding.
  np.testing.assert_allclose(mu1, mu2, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(s1, s2, rtol=1e-6)


@pytest.mark.parametrize("T,B", [(9, 32), (9, 20), (9, 5), (2, 3)])
def test_stratified_t_spreads_the_batch_evenly_and_each_t_is_uniform(T, B):
  n = T - 1
  counts = np.stack([np.bincount(np.asarray(diffusion.stratified_t(s, T, B)), minlength=T)
                     for s in range(n)])
  assert np.all(counts[:, 0] == 0) and np.all(counts.sum(axis=1) == B)
  # Every batch: each t gets B/(T-1) examples, rounded down or up.
  assert np.all(counts[:, 1:] >= B // n) and np.all(counts[:, 1:] <= -(-B // n))
  # Over the offsets, each example's t is uniform on 1..T-1: every t the same.
  for i in range(B):
    ts = [int(diffusion.stratified_t(s, T, B)[i]) for s in range(n)]
    assert sorted(ts) == list(range(1, T)), i
  if B % n == 0:  # dealt round the T-1 steps from 1 + offset: each row holds every t once
    t = np.asarray(diffusion.stratified_t(3 % n, T, B)).reshape(B // n, n)
    np.testing.assert_array_equal(t, (1 + (np.arange(n) + 3) % n)[None, :].repeat(B // n, 0))
  # Any run of consecutive examples is a stratified draw, offset by its first t - 1.
  t = np.asarray(diffusion.stratified_t(2 % n, T, B))
  np.testing.assert_array_equal(t[1:], diffusion.stratified_t(t[1] - 1, T, B - 1))


def test_stratified_t_sampling_draws_a_rotation_per_batch():
  model = diffusion.make_model(tiny_model_config(t_sampling="stratified"))
  x = jnp.zeros((16, 8, 8, 1))
  draws = diffusion.make_loss_fn(model).draw(jax.random.key(0), x)
  (per_example,), (shared,) = draws.per_example, draws.shared
  assert shared == {} and per_example["t"].shape == (16,)
  t = np.asarray(per_example["t"])
  np.testing.assert_array_equal(t, diffusion.stratified_t(t[0] - 1, 20, 16))
  firsts = {int(diffusion.make_loss_fn(model).draw(jax.random.key(k), x).per_example[0]["t"][0])
            for k in range(40)}
  assert len(firsts) > 4  # the offset is random


def test_reverse_kernel_with_zero_coefficients_is_the_forward_kernel():
  x = jnp.linspace(-2, 2, 5)
  mu, sigma = diffusion.reverse_kernel(x, 0.0, 0.0, 0.3, 1000)
  np.testing.assert_allclose(mu, x * np.sqrt(0.7), rtol=1e-6)
  np.testing.assert_allclose(sigma, np.sqrt(0.3), rtol=1e-6)


def test_kl_multiplier_switch():
  assert diffusion.kl_multiplier(tiny_model_config()) == 19
  assert diffusion.kl_multiplier(tiny_model_config(kl_multiplier="T")) == 20


@pytest.mark.slow
def test_dropout_only_in_training():
  model = diffusion.make_model(tiny_model_config(dropout_rate=0.5))
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
  train = jax.jit(diffusion.make_loss_fn(model, train=True))
  evaluate = jax.jit(diffusion.make_loss_fn(model, train=False))
  nodrop = jax.jit(diffusion.make_loss_fn(diffusion.make_model(tiny_model_config()), train=True))
  key = jax.random.key(2)
  assert float(evaluate(params, x, key)[0]) == pytest.approx(float(nodrop(params, x, key)[0]), rel=1e-6)
  assert float(train(params, x, key)[0]) != pytest.approx(float(evaluate(params, x, key)[0]), rel=1e-6)


# A small step: finite differences must not straddle the LeakyReLU kinks.
def _to64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("conv", ["xla", "cpu"])
def test_check_grads_network_float64(conv):
  with jax.enable_x64(True):
    model = diffusion.make_model(tiny_model_config(n_hidden_conv=3), conv)
    params = _to64(diffusion.init_params(model, jax.random.key(0)))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1), jnp.float64)
    f = lambda p: model.apply(p, x, method="network_output")
    check_grads(jax.jit(f), (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)
    g = lambda xx: model.apply(params, xx, method="network_output")
    check_grads(jax.jit(g), (x,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


@pytest.mark.parametrize("learn_beta", [True])  # a learned schedule: every path of a fixed one
def test_check_grads_loss_float64(learn_beta):
  with jax.enable_x64(True):
    cfg = tiny_model_config(learn_beta=learn_beta, t_sampling="per_example")
    model = diffusion.make_model(cfg)
    params = _to64(diffusion.init_params(model, jax.random.key(0)))
    if learn_beta:
      params["params"]["beta_perturb_coefficients"] = jnp.asarray([0.1, -0.2, 0.3, 0.05])
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1), jnp.float64)
    loss_fn = diffusion.make_loss_fn(model, uniform_noise=0.05)
    f = jax.jit(lambda p: loss_fn(p, x, jax.random.key(3))[0])
    check_grads(f, (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)
    if learn_beta:  # the loss depends on the schedule's coefficients (so their checked
      bumped = jax.tree.map(lambda a: a, params)  # gradient is not zero by construction)
      bumped["params"]["beta_perturb_coefficients"] = params["params"][
          "beta_perturb_coefficients"] + 1e-3
      assert np.isfinite(float(f(bumped))) and float(f(bumped)) != float(f(params))


def test_learned_schedule_starts_at_the_reference_schedule():
  model = diffusion.make_model(tiny_model_config(learn_beta=True))
  params = diffusion.init_params(model, jax.random.key(0))
  np.testing.assert_array_equal(params["params"]["beta_perturb_coefficients"], np.zeros(4))
  fixed = diffusion.make_model(tiny_model_config())
  beta = lambda model, params: jax.jit(lambda p: model.apply(p, method="beta_arr"))(params)
  np.testing.assert_allclose(beta(model, params), beta(fixed, {}), rtol=1e-7)


def test_get_norms_matches_the_seed_definition():
  params = {"a": {"w": jnp.asarray([[3.0, 4.0]])}, "b": jnp.asarray([1.0, 1.0, 1.0, 1.0])}
  grads = jax.tree.map(lambda x: 2 * x, params)
  norms = diffusion.get_norms(params, grads)
  assert norms["norm/a/w"] == pytest.approx(5.0 / 2)
  assert norms["norm/b"] == pytest.approx(2.0 / 4)
  assert norms["grad_norm/a/w"] == pytest.approx(10.0 / 2)
  assert set(diffusion.get_norms(params)) == {"norm/a/w", "norm/b"}


@pytest.mark.slow  # how the gradient runs (dpm_jax.parallel), not the math
@pytest.mark.parametrize("t_sampling,n_t", [("per_minibatch", 1), ("per_example", 2),
                                           ("stratified", 1)])
def test_micro_batched_gradient_equals_whole_batch_gradient(t_sampling, n_t):
  model = diffusion.make_model(tiny_model_config(t_sampling=t_sampling, n_t_per_minibatch=n_t))
  params = diffusion.init_params(model, jax.random.key(0))
  x = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
  loss_fn = diffusion.make_loss_fn(model, uniform_noise=0.1)
  whole = jax.jit(parallel.make_loss_and_grad(loss_fn))
  (l1, m1), g1 = whole(params, x, jax.random.key(2))
  for concurrent in (1, 2):  # 4 micro-batches, one or two per iteration
    micro = jax.jit(parallel.make_loss_and_grad(loss_fn, micro_batch_size=2,
                                                concurrent_micro_batches=concurrent))
    (l2, m2), g2 = micro(params, x, jax.random.key(2))
    np.testing.assert_allclose(l1, l2, rtol=3e-5)  # float32 sums in another order
    np.testing.assert_allclose(m1["t_mean"], m2["t_mean"], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="does not divide"):
    parallel.make_loss_and_grad(loss_fn, micro_batch_size=3)(params, x, jax.random.key(2))
  with pytest.raises(ValueError, match="concurrent_micro_batches=3 does not divide the 4"):
    parallel.make_loss_and_grad(loss_fn, micro_batch_size=2, concurrent_micro_batches=3)(
        params, x, jax.random.key(2))
