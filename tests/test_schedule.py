"""The beta schedule, temporal basis, t-weights and readout."""

import jax.numpy as jnp
import numpy as np
import pytest

from dpm_jax import schedule


def reference_betas(link="logit", coeffs=None):
  basis = schedule.temporal_basis(1000, 10)
  return np.asarray(schedule.beta_schedule(1000, 1e-3, basis, coeffs, link=link))


def test_check_values_of_the_reference_schedule():
  beta = reference_betas()
  assert beta.shape == (1000,)
  np.testing.assert_allclose(beta[0], 0.0020, atol=1e-5)
  np.testing.assert_allclose(beta[1], 0.0010, atol=1e-5)
  np.testing.assert_allclose(beta[-1], 0.49999, atol=1e-5)
  np.testing.assert_allclose(np.prod(1.0 - beta.astype(np.float64)), 9.9e-4, rtol=0.01)
  assert np.all(np.diff(beta[1:]) > 0)


def test_seed_log_link_changes_every_beta():
  # The seed notebook wrote log where the reference code has logit.
  assert np.all(np.abs(reference_betas("log") - reference_betas("logit")) > 1e-7)
  with pytest.raises(ValueError, match="link must be"):
    reference_betas("identity")


def test_perturbation_moves_beta_through_the_basis():
  coeffs = jnp.zeros(10).at[9].set(1.0)
  beta = reference_betas(coeffs=coeffs)
  base = reference_betas()
  assert beta[-1] > base[-1]
  np.testing.assert_allclose(beta[:100], base[:100], rtol=1e-3)


def test_temporal_basis_columns_sum_to_one():
  basis = schedule.temporal_basis(1000, 10)
  assert basis.shape == (10, 1000)
  np.testing.assert_allclose(basis.sum(axis=0), 1.0, rtol=1e-12)
  # Bump j peaks at the time step nearest its centre.
  centres = np.linspace(0, 999, 10)
  np.testing.assert_allclose(np.argmax(basis, axis=1), np.round(centres), atol=1)
  with pytest.raises(ValueError):
    schedule.temporal_basis(100, 1)


def test_t_weights_one_hot_and_interpolating():
  w = np.asarray(schedule.t_weights(jnp.asarray(3), 6))
  np.testing.assert_array_equal(w, [0, 0, 0, 1, 0, 0])
  w = np.asarray(schedule.t_weights(jnp.asarray([2.25, 4.0]), 6))
  np.testing.assert_allclose(w, [[0, 0, 0.75, 0.25, 0, 0], [0, 0, 0, 0, 1, 0]])


def test_at_t_reads_and_interpolates():
  values = jnp.arange(10.0) ** 2
  assert float(schedule.at_t(values, jnp.asarray(4))) == 16.0
  np.testing.assert_allclose(schedule.at_t(values, jnp.asarray([4.5])), [20.5])


def test_alpha_cum():
  beta = jnp.asarray([0.1, 0.2, 0.5])
  np.testing.assert_allclose(schedule.alpha_cum(beta), [0.9, 0.72, 0.36], rtol=1e-6)


def test_temporal_readout_layout_and_per_example_t():
  rng = np.random.default_rng(0)
  basis = schedule.temporal_basis(50, 4)
  n_colors = 3
  z = rng.normal(size=(2, 4, 4, n_colors * 2 * 4)).astype(np.float32)
  mu, beta = schedule.temporal_readout(jnp.asarray(z), jnp.asarray(17.0), basis, n_colors)
  assert mu.shape == beta.shape == (2, 4, 4, n_colors)
  zz = z.reshape(2, 4, 4, n_colors, 2, 4)
  np.testing.assert_allclose(mu, zz[..., 0, :] @ basis[:, 17], rtol=1e-5)
  np.testing.assert_allclose(beta, zz[..., 1, :] @ basis[:, 17], rtol=1e-5)
  mu2, beta2 = schedule.temporal_readout(jnp.asarray(z), jnp.asarray([17.0, 30.0]), basis, n_colors)
  np.testing.assert_allclose(mu2[0], mu[0], rtol=1e-5)
  np.testing.assert_allclose(beta2[1], zz[1, ..., 1, :] @ basis[:, 30], rtol=1e-5)


def test_logit_inverts_sigmoid():
  u = jnp.asarray([1e-4, 0.3, 0.5, 0.9])
  np.testing.assert_allclose(1 / (1 + jnp.exp(-schedule.logit(u))), u, rtol=1e-5)


def test_folded_readout_equals_reading_out_the_last_layer():
  rng = np.random.default_rng(1)
  basis = schedule.temporal_basis(30, 5)
  n_colors, k = 3, 7
  h = jnp.asarray(rng.normal(size=(2, 4, 4, k)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, n_colors * 2 * 5)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(n_colors * 2 * 5,)), jnp.float32)
  for t in (jnp.asarray(11.0), jnp.asarray([3.0, 26.5])):
    mu, beta = schedule.temporal_readout(h @ kernel + bias, t, basis, n_colors)
    w = schedule.readout_weights(t, jnp.asarray(basis, jnp.float32))
    folded = schedule.folded_readout(h, kernel, bias, w, n_colors)
    np.testing.assert_allclose(folded[..., 0], mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(folded[..., 1], beta, rtol=1e-5, atol=1e-5)


def test_at_t_reads_the_triangular_weights_with_gathers():
  """at_t equals t_weights(t) @ values at integer and fractional t, for one t or a batch."""
  values = jnp.asarray(np.random.default_rng(0).normal(size=50), jnp.float32)
  for t in (jnp.asarray(0.0), jnp.asarray(49.0), jnp.asarray([3.0, 7.25, 48.5, 0.5])):
    np.testing.assert_allclose(schedule.at_t(values, t), schedule.t_weights(t, 50) @ values,
                               rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(schedule.at_t(values, jnp.arange(50)), values)
