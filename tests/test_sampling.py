"""The reverse trajectory: determinism, conditioning and closed-form checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_model_config
from dpm_jax import errors
from dpm_jax import data as data_lib, diffusion, networks, sampling
from test_diffusion import isotropic_params


@pytest.fixture(scope="module")
def tiny():
  model = diffusion.make_model(tiny_model_config())
  params = diffusion.init_params(model, jax.random.key(0))
  return model, params


def test_sampler_is_deterministic_in_its_key_and_records_states(tiny):
  model, params = tiny
  sample = sampling.make_sampler(model, num_images=3, record_t=(19, 10, 0, -1))
  x, states = sample(params, jax.random.key(1))
  x2, _ = sample(params, jax.random.key(1))
  x3, _ = sample(params, jax.random.key(2))
  assert x.shape == (3, 8, 8, 1) and states.shape == (4, 3, 8, 8, 1)
  np.testing.assert_array_equal(x, x2)
  assert not np.allclose(x, x3)
  np.testing.assert_array_equal(states[-1], x)
  assert np.all(np.isfinite(states))
  # x_{T-1} is the N(0, I) start drawn from fold_in(key, T).
  np.testing.assert_array_equal(states[0], jax.random.normal(jax.random.fold_in(jax.random.key(1), 20), x.shape))


def test_fixed_first_step_is_applied_unless_skipped(tiny):
  model, params = tiny
  key = jax.random.key(4)
  full, states = sampling.make_sampler(model, num_images=2, record_t=(0,))(params, key)
  skipped = sampling.make_sampler(model, num_images=2, skip_first_step=True)(params, key)
  np.testing.assert_array_equal(skipped, states[0])  # the reference sampler ends at x_0
  beta0 = float(model.apply(params, method="beta_arr")[0])
  eps = jax.random.normal(jax.random.fold_in(key, 0), full.shape)
  np.testing.assert_allclose(full, skipped * math.sqrt(1 - beta0) + math.sqrt(beta0) * eps, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inpainting_keeps_known_pixels_exactly(tiny):
  model, params = tiny
  known = jax.random.normal(jax.random.key(5), (4, 8, 8, 1))
  for kind in sampling.MASKS:
    mask = sampling.inpaint_mask(kind, 8, 1)
    assert mask.any() and not mask.all()
    x, states = sampling.make_sampler(model, num_images=4, record_t=(19, 7))(
        params, jax.random.key(6), mask=jnp.asarray(mask), known=known)
    m = np.broadcast_to(mask, x.shape)
    np.testing.assert_array_equal(np.asarray(x)[m], np.asarray(known)[m])
    np.testing.assert_array_equal(np.asarray(states[1])[m], np.asarray(known)[m])
    assert not np.allclose(np.asarray(x)[~m], np.asarray(known)[~m])
  right = sampling.inpaint_mask("right_half", 8, 1)
  assert right[:, 4:].all() and not right[:, :4].any()  # the reference mask
  with pytest.raises(errors.UserError, match="Unknown mask"):
    sampling.inpaint_mask("diagonal", 8)


def test_denoising_with_vanishing_noise_returns_the_observation(tiny):
  model, params = tiny
  y = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
  x = sampling.make_sampler(model, num_images=3)(params, jax.random.key(8), y=y,
                                                  denoise_sigma=jnp.asarray(1e-5))
  np.testing.assert_allclose(x, y, atol=1e-4)
  x = sampling.make_sampler(model, num_images=3)(params, jax.random.key(8), y=y,
                                                  denoise_sigma=jnp.asarray(1.0))
  assert np.abs(np.asarray(x - y)).mean() > 0.1


def test_condition_step_matches_the_gaussian_product():
  mu, sigma, y, sd = 0.3, 0.5, -1.0, 2.0
  m, s = sampling.condition_step(jnp.asarray([mu]), jnp.asarray([sigma]), y=jnp.asarray([y]),
                                 denoise_sigma=sd)
  precision = 1 / sigma**2 + 1 / sd**2
  np.testing.assert_allclose(s, [precision**-0.5], rtol=1e-6)
  np.testing.assert_allclose(m, [(mu / sigma**2 + y / sd**2) / precision], rtol=1e-6)
  # A Gaussian r shifts the mean by sigma^2 * grad log r at the mean.
  m, s = sampling.condition_step(jnp.asarray([[mu]]), jnp.asarray([[sigma]]),
                                 log_r=sampling.gaussian_log_r(jnp.asarray([[y]]), sd))
  np.testing.assert_allclose(m, [[mu + sigma**2 * (y - mu) / sd**2]], rtol=1e-6)
  np.testing.assert_allclose(s, [[sigma]])


def isotropic_sampling_setup(T=200):
  cfg = tiny_model_config(trajectory_length=T, n_temporal_basis=5)
  model = diffusion.make_model(cfg)
  return model, isotropic_params(diffusion.init_params(model, jax.random.key(0)))


@pytest.mark.slow
@pytest.mark.parametrize("skip_first_step", [False, True])
def test_isotropic_model_samples_unit_gaussians(skip_first_step):
  model, params = isotropic_sampling_setup()
  x = np.asarray(sampling.make_sampler(model, num_images=1000, skip_first_step=skip_first_step)(
      params, jax.random.key(9))).ravel()
  n = x.size  # 64000 independent N(0, 1) values
  assert abs(x.mean()) < 4 / math.sqrt(n)
  assert abs(x.var() - 1) < 4 * math.sqrt(2 / n)


@pytest.mark.slow
def test_perturbed_posterior_sampler_on_a_gaussian_perturbation():
  """The paper's rule with r = N(y; x, s^2) on the isotropic unit-variance model.

  Every step is linear-Gaussian, so the distribution it samples is known
  exactly: propagate the mean and variance through the schedule.
  """
  T, y, s = 200, 1.0, 0.5
  model, params = isotropic_sampling_setup(T)
  beta = np.asarray(model.apply(params, method="beta_arr"), np.float64)
  mean, var = 0.0, 1.0
  for t in range(T - 1, -1, -1):
    c = math.sqrt(1 - beta[t]) * (1 - beta[t] / s**2)
    mean, var = c * mean + beta[t] / s**2 * y, c**2 * var + beta[t]
  log_r = sampling.gaussian_log_r(jnp.full((1000, 8, 8, 1), y), s)
  x = np.asarray(sampling.make_sampler(model, num_images=1000, log_r=log_r)(params, jax.random.key(10)))
  n = x.size
  assert abs(x.mean() - mean) < 4 * math.sqrt(var / n), (x.mean(), mean)
  assert abs(x.var() - var) < 4 * var * math.sqrt(2 / n), (x.var(), var)
  # For reference: N(0, 1) r is N(0.8, 0.2); N(0, 1) r^2 is N(0.889, 0.111).
  # Multiplying every step by r compounds towards the latter.
  assert 0.8 < mean < 0.9 and 0.11 < var < 0.2


@pytest.mark.slow
def test_superres_posterior_matches_its_low_resolution_observation():
  """With a sharp r, the samples' 2x2 means match the observation."""
  model, params = isotropic_sampling_setup(100)
  y_low = jax.random.normal(jax.random.key(11), (16, 4, 4, 1))
  log_r = sampling.downsampling_log_r(y_low, 2, 0.05)
  x = sampling.make_sampler(model, num_images=16, log_r=log_r)(params, jax.random.key(12))
  pooled = np.asarray(networks.mean_pool(x, 2))
  assert np.abs(pooled - np.asarray(y_low)).mean() < 0.1
  unconditioned = sampling.make_sampler(model, num_images=16)(params, jax.random.key(12))
  assert np.abs(np.asarray(networks.mean_pool(unconditioned, 2)) - np.asarray(y_low)).mean() > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("mode", sampling.MODES)
def test_generate_modes(tiny, mode):
  model, params = tiny
  stats = data_lib.DataStats(scale=3.0, shift=-0.4, uniform_noise=3.0 / 255)
  true = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
  out = sampling.generate(model, params, stats, mode, jax.random.key(0), num_images=4,
                          true_images=None if mode == "sample" else true, superres_factor=2,
                          record_t=(19, -1))
  assert out["samples"].shape == (4, 8, 8, 1) and out["states"].shape == (2, 4, 8, 8, 1)
  if mode != "sample":
    np.testing.assert_allclose(out["true"], true / 255.0, atol=1e-6)
    assert out["observed"].shape == (4, 8, 8, 1)
  if mode == "inpaint":
    m = np.broadcast_to(out["mask"], out["samples"].shape)
    np.testing.assert_allclose(out["samples"][m], out["true"][m], atol=1e-6)
  with pytest.raises(errors.UserError, match="needs 4 true images"):
    if mode != "sample":
      sampling.generate(model, params, stats, mode, jax.random.key(0), num_images=4)
    else:
      raise errors.UserError("needs 4 true images")


def test_default_record_t():
  assert sampling.default_record_t(1000, 4) == [999, 800, 600, 400, 200, 0, -1]
  assert sampling.label_of_t(-1) == "sample" and sampling.label_of_t(5) == "t=5"
  assert sampling.default_record_t(20, 2) == [19, 13, 7, 0, -1]
