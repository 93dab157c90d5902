"""Binomial diffusion against direct enumeration; the heartbeat model and its bound."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from dpm_jax import binomial, diffusion, heartbeat
from dpm_jax.kernels import readout


def small_process(T=6, p=0.3):
  beta = np.asarray([0.05, 0.2, 0.1, 0.4, 0.3, 0.7][:T])
  return binomial.BinomialDiffusion(jnp.asarray(beta), jnp.asarray(p)), beta, p


def kernel(beta_t, p):
  """K[a, b] = q(x_t = b | x_{t-1} = a) for one bit."""
  one = (1 - beta_t) + p * beta_t  # keep the bit, or redraw it from B(p)
  return np.asarray([[1 - p * beta_t, p * beta_t], [1 - one, one]])


def test_marginals_and_posterior_against_enumeration():
  with jax.enable_x64(True):
    process, beta, p = small_process()
    for x0 in (0.0, 1.0):
      dist = np.asarray([1 - x0, x0])  # x_0 is the data; step 0 acts on it
      dists = []
      for t in range(len(beta)):
        dist = dist @ kernel(beta[t], p)
        dists.append(dist)
        np.testing.assert_allclose(process.marginal_rate(jnp.asarray(x0), jnp.asarray(float(t))),
                                   dist[1], rtol=1e-12)
      for t in range(1, len(beta)):
        joint = dists[t - 1][:, None] * kernel(beta[t], p)  # [x_{t-1}, x_t]
        for xt in (0, 1):
          want = joint[1, xt] / joint[:, xt].sum()
          got = process.posterior(jnp.asarray(x0), jnp.asarray(float(xt)), jnp.asarray(float(t)))
          np.testing.assert_allclose(got, want, rtol=1e-12)


def test_q_sample_is_a_threshold_of_the_uniform_noise():
  process, _, _ = small_process()
  x0 = jnp.asarray([[0.0, 1.0]] * 3)
  noise = jnp.asarray([[0.1, 0.1], [0.5, 0.5], [0.99, 0.99]])
  t = jnp.asarray([2.0, 2.0, 2.0])
  rate = process.marginal_rate(x0, t)
  np.testing.assert_array_equal(process.q_sample(x0, t, noise), (noise < rate).astype(np.float32))


def test_bernoulli_kl_and_entropy_closed_forms():
  for q, p in itertools.product([0.01, 0.3, 0.5, 0.9], [0.05, 0.5, 0.8]):
    want = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    assert float(binomial.bernoulli_kl(q, p)) == pytest.approx(want, rel=1e-5, abs=1e-7)
  assert float(binomial.bernoulli_kl(0.3, 0.3)) == pytest.approx(0.0, abs=1e-7)
  assert float(binomial.bernoulli_entropy(0.5)) == pytest.approx(math.log(2), rel=1e-6)
  assert float(binomial.bernoulli_entropy(0.2)) == pytest.approx(
      -(0.2 * math.log(0.2) + 0.8 * math.log(0.8)), rel=1e-6)


def test_erase_fraction_schedule():
  T = 2000
  beta = binomial.erase_fraction_schedule(T)
  abar = np.cumprod(1 - beta)
  assert beta[0] == pytest.approx(1 / T) and beta[-1] == 1.0
  np.testing.assert_allclose(abar, 1 - np.arange(1, T + 1) / T, atol=1e-12)


def test_bound_is_zero_for_the_stationary_chain_exactly():
  """Data from B(p) and the reverse kernel equal to the forward one: K = L_null.

  The expectation over x_0 and x_t is enumerated per bit, for every t.
  """
  with jax.enable_x64(True):
    process, beta, p = small_process()
    T = len(beta)
    total = 0.0
    for x0, w0 in ((0.0, 1 - p), (1.0, p)):
      x0a = jnp.asarray(x0)
      h = process.entropies(x0a)
      total += w0 * float(h.start - h.end)
      for t in range(1, T):
        tt = jnp.asarray(float(t))
        q1 = float(process.marginal_rate(x0a, tt))
        for xt, wt in ((0.0, 1 - q1), (1.0, q1)):
          xta = jnp.asarray(xt)
          kl = process.kl(process.posterior(x0a, xta, tt), process.forward_rate(xta, tt))
          total += w0 * wt * float(kl)
    assert abs(total) < 1e-12
    assert float(h.prior) == pytest.approx(float(binomial.bernoulli_entropy(p)))


def untrained_heartbeat(**overrides):
  cfg = heartbeat.model_config()
  cfg.trajectory_length = 50
  cfg.n_hidden = 8
  for k, v in overrides.items():
    cfg[k] = v
  model = heartbeat.make_model(cfg)
  return model, diffusion.init_params(model, jax.random.key(0))


def test_stationary_chain_model_has_zero_bound_on_stationary_data():
  """With zero readouts the reverse kernel is the forward kernel, so on stationary
  data the loss -(K - L_null) is zero within its Monte Carlo error."""
  model, params = untrained_heartbeat()
  params = jax.tree.map(jnp.zeros_like, params)
  x_t = jnp.asarray(heartbeat.sample_data(4, 0))
  rates = jax.jit(lambda p, x, t: (model.apply(p, x, t, method="reverse"),
                                    model.apply(p, method="process").forward_rate(x, t)))
  rate, forward = rates(params, x_t, jnp.full((4,), 7.0))
  np.testing.assert_allclose(rate, forward, rtol=1e-5)
  loss_fn = jax.jit(diffusion.make_loss_fn(model, train=False))
  losses = []
  for i in range(30):
    x0 = (jax.random.uniform(jax.random.key(100 + i), (512, 20)) < 0.2).astype(jnp.float32)
    loss, m = loss_fn(params, x0, jax.random.key(i))
    losses.append(float(loss))
  mean, stderr = np.mean(losses), np.std(losses, ddof=1) / math.sqrt(len(losses))
  assert abs(mean) < 4 * stderr + 1e-3, (mean, stderr)
  assert float(m["L_null"]) == pytest.approx(-20 * float(binomial.bernoulli_entropy(0.2)) / math.log(2),
                                            rel=1e-5)
  assert float(m["L_null"]) == pytest.approx(-14.439, abs=1e-3)


def test_heartbeat_data():
  x = heartbeat.sample_data(1000, 0)
  assert x.shape == (1000, 20) and set(np.unique(x)) == {0.0, 1.0}
  assert np.all(x.sum(axis=1) == 4) and x.mean() == pytest.approx(0.2)
  phases = {int(np.argmax(row)) for row in x}
  assert phases == {0, 1, 2, 3, 4}
  assert heartbeat.true_log_likelihood_bits() == pytest.approx(math.log2(0.2))


@pytest.mark.parametrize("offset", ["forward", pytest.param("none", marks=pytest.mark.slow)])
def test_check_grads_heartbeat_network_float64(offset):
  with jax.enable_x64(True):
    model, params = untrained_heartbeat(reverse_offset=offset)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                          + 0.1 * jax.random.normal(jax.random.key(3), a.shape, jnp.float64),
                          params)
    x = jnp.asarray(heartbeat.sample_data(3, 1), jnp.float64)
    t = jnp.asarray([3.0, 17.0, 40.0])
    f = lambda p: jnp.sum(jnp.log(model.apply(p, x, t, method="reverse")))
    check_grads(jax.jit(f), (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)
    loss_fn = diffusion.make_loss_fn(model)
    g = lambda p: loss_fn(p, x, jax.random.key(4))[0]
    check_grads(jax.jit(g), (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5, eps=1e-6)


@pytest.mark.parametrize("B,offset", [(14, 0), (14, 5), (28, 6), (7, 3), (10, 2)])
def test_per_step_readout_of_stratified_t_in_blocks_equals_the_gather(B, offset):
  """A stratified t, T-1 dividing the batch (or a slice of it): read out block by block,
  decided from t itself; values and gradients as the gather, also for a t that is not
  stratified (the other branch)."""
  T = 8
  kernel = jax.random.normal(jax.random.key(0), (T, 5, 3))
  bias = jax.random.normal(jax.random.key(1), (T, 3))
  h = jax.random.normal(jax.random.key(2), (B, 5))
  t = diffusion.stratified_t(offset, T, B)
  assert readout.reads_in_blocks(B, T) == (B % (T - 1) == 0)
  assert bool(readout.is_stratified(t, T))
  shuffled = jax.random.permutation(jax.random.key(3), t)
  assert not bool(readout.is_stratified(shuffled, T)) or B <= 2
  loss = lambda fn: jax.jit(jax.value_and_grad(
      lambda h, k, b, t: jnp.sum(jnp.sin(fn(h, t, k, b))), argnums=(0, 1, 2)))
  blocked = readout.per_step_readout
  parts = [(h, t), (h, shuffled)] + ([(h[3:10], t[3:10])] if B >= 10 else [])  # a slice too
  for hh, tt in parts:
    (v1, g1), (v2, g2) = (loss(fn)(hh, kernel, bias, tt) for fn in (blocked, readout._gathered))
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(g1, g2):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # how the gradient runs (dpm_jax.parallel), not the math
def test_heartbeat_stratified_loss_whole_batch_equals_micro_batches():
  """The whole batch's readout in blocks, micro-batches' by the gather: the same gradient."""
  from dpm_jax import parallel  # pylint: disable=g-import-not-at-top
  model, params = untrained_heartbeat(t_sampling="stratified", trajectory_length=9)
  x = jnp.asarray(heartbeat.sample_data(32, 0))
  loss_fn = diffusion.make_loss_fn(model)
  (l1, _), g1 = jax.jit(parallel.make_loss_and_grad(loss_fn))(params, x, jax.random.key(1))
  (l2, _), g2 = jax.jit(parallel.make_loss_and_grad(loss_fn, micro_batch_size=8))(
      params, x, jax.random.key(1))
  np.testing.assert_allclose(l1, l2, atol=3e-4)  # ~14 bits summed over thousands of examples, float32
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
