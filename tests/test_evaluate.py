"""Test-set bounds (one t, all t, stratified), unit conversion, Parzen windows."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from conftest import image_task, tiny_model_config
from dpm_jax import data as data_lib, diffusion, evaluate, parallel


@pytest.fixture(scope="module")
def setup():
  cfg = tiny_model_config(trajectory_length=20, t_sampling="per_example")
  model = diffusion.make_model(cfg)
  params = diffusion.init_params(model, jax.random.key(0))
  # Larger weights than at initialisation, so the KL varies with t and image.
  params = jax.tree.map(lambda x: x * 3.0, params)
  images = np.random.default_rng(0).integers(0, 256, (60, 8, 8, 1), dtype=np.uint8)
  stats = data_lib.compute_stats(images)
  return image_task(cfg, images, stats), params, images, stats


@pytest.mark.slow
def test_all_t_bound_equals_the_mean_of_single_t_estimates(setup):
  task, params, images, stats = setup
  exact = evaluate.bound_all_t(task, params, images, jax.random.key(1), batch_size=25)
  assert exact["per_image"].shape == (60,) and exact["kl_per_t"].shape == (19,)
  assert np.all(exact["kl_per_t"] > 0)
  # The training loss is a one-t estimate of the same bound: average many.
  loss_fn = jax.jit(diffusion.make_loss_fn(task.model, uniform_noise=stats.uniform_noise,
                                           train=False))
  x = data_lib.to_model_units(images, stats)
  draws = np.asarray([loss_fn(params, x, jax.random.key(100 + i))[0] for i in range(300)])
  mean, stderr = draws.mean(), draws.std(ddof=1) / math.sqrt(draws.size)
  # Both carry Monte Carlo noise over the forward noise; the all-t one is over 60 images.
  tol = 4 * math.hypot(stderr, exact["neg_K_minus_L_null_stderr"])
  assert abs(mean - exact["neg_K_minus_L_null_bits_per_pixel"]) < tol, (mean, exact)


def test_all_t_curve_sums_to_the_bound(setup):
  task, params, images, stats = setup
  exact = evaluate.bound_all_t(task, params, images, jax.random.key(2), batch_size=60)
  beta = np.asarray(task.model.apply(params, method="beta_arr"), np.float64)
  h = lambda v: 0.5 * (1 + math.log(2 * math.pi)) + 0.5 * math.log(v)
  from_curve = (exact["kl_per_t"].sum() + h(beta[0]) - h(1 - np.prod(1 - beta))) / math.log(2)
  np.testing.assert_allclose(from_curve, exact["neg_K_minus_L_null_bits_per_pixel"], rtol=1e-4)
  # K and L_null in bits per pixel: L_null = -H(1), K = L_null + (K - L_null).
  assert exact["L_null_bits"] == pytest.approx(-h(1.0) / math.log(2), rel=1e-6)
  assert exact["K_bits"] == pytest.approx(exact["L_null_bits"] + exact["K_minus_L_null_bits"])


@pytest.mark.slow
def test_stratified_and_one_t_estimates_agree_with_all_t(setup):
  task, params, images, stats = setup
  exact = evaluate.bound_all_t(task, params, images, jax.random.key(3))
  strat = evaluate.bound_stratified(task, params, images, jax.random.key(4), num_strata=5)
  one_t = evaluate.bound_one_t(task, params, images, jax.random.key(5), num_batches=200,
                               batch_size=20)
  for est in (strat, one_t):
    tol = 4 * math.hypot(est["neg_K_minus_L_null_stderr"], exact["neg_K_minus_L_null_stderr"])
    assert abs(est["neg_K_minus_L_null_bits_per_pixel"]
               - exact["neg_K_minus_L_null_bits_per_pixel"]) < tol
  # Stratification removes variance over t: compare with one random t per image.
  single = evaluate.bound_stratified(task, params, images, jax.random.key(4), num_strata=1)
  assert strat["neg_K_minus_L_null_stderr"] < single["neg_K_minus_L_null_stderr"]
  with pytest.raises(ValueError, match=r"num_strata=25 must be in 1..19"):
    evaluate.bound_stratified(task, params, images, jax.random.key(4), num_strata=25)


def test_bits_per_dim_conversion():
  stats = data_lib.DataStats(scale=3.0, shift=-1.0, uniform_noise=3.0 / 255)
  # cost 0: the data is as likely as under N(0, 1) in model units.
  expected = (0.5 * math.log(2 * math.pi * math.e) + math.log(255 / 3.0)) / math.log(2)
  assert stats.nll_bits_per_dim(0.0) == pytest.approx(expected)
  # Summed over colours in the cost, per dimension in the NLL.
  colour = dataclasses.replace(stats, n_colors=3)
  assert colour.nll_bits_per_dim(-3.0) == pytest.approx(expected - 1.0)
  assert colour.extras(-3.0, 0.3) == {"nll_bpd": pytest.approx(expected - 1.0),
                                      "nll_bpd_stderr": pytest.approx(0.1)}
  reference = dataclasses.replace(colour, dequantization="reference")
  assert set(reference.extras(-3.0, 0.3)) == {"density_bpd", "density_bpd_stderr"}


def test_parzen_single_sample_is_a_gaussian_density():
  s = np.array([[0.2, -0.4, 1.0]])
  x = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
  sigma = 0.7
  expected = (-np.sum((x - s) ** 2, axis=1) / (2 * sigma**2) - 1.5 * math.log(2 * math.pi * sigma**2))
  np.testing.assert_allclose(evaluate.parzen_log_likelihood(s, x, sigma), expected, rtol=1e-5)


@pytest.mark.slow
def test_parzen_of_gaussian_samples_tends_to_the_convolved_gaussian():
  rng = np.random.default_rng(0)
  d, tau, sigma = 2, 1.0, 0.3
  samples = tau * rng.normal(size=(100000, d))
  x = rng.normal(size=(2000, d))
  var = tau**2 + sigma**2
  exact = -np.sum(x**2, axis=1) / (2 * var) - 0.5 * d * math.log(2 * math.pi * var)
  est = evaluate.parzen_log_likelihood(samples, x, sigma)
  assert abs(est.mean() - exact.mean()) < 0.01
  assert np.median(np.abs(est - exact)) < 0.02  # tails are sparse in samples


@pytest.mark.slow
def test_parzen_window_selection_prefers_the_right_width():
  rng = np.random.default_rng(1)
  samples = rng.normal(size=(3000, 2))
  validation, test = rng.normal(size=(500, 2)), rng.normal(size=(500, 2))
  result = evaluate.parzen_select_and_score(samples, validation, test, sigmas=[0.01, 0.3, 10.0])
  assert result["sigma"] == 0.3
  assert result["test_bits"] == pytest.approx(result["test_nats"] / math.log(2))
  assert result["test_nats_stderr"] > 0


@pytest.mark.slow
def test_training_evaluator_is_the_stratified_bound_on_a_fixed_subset(setup):
  import ml_collections
  task, params, images, stats = setup
  cfg = ml_collections.ConfigDict(dict(method="stratified", num_strata=4, num_images=45,
                                       batch_size=20, num_batches=2, seed=3))
  key = jax.random.key(7)
  ev = evaluate.make_test_evaluator(task, cfg, parallel.DataParallel(), key=key)
  got = ev(params)
  # Whole batches only: 45 images -> 40, taken in the evaluator's fixed order.
  subset = images[np.random.default_rng(3).permutation(60)[:40]]
  want = evaluate.bound_stratified(task, params, subset, key, num_strata=4, batch_size=20)
  assert got["eval/num_images"] == 40
  np.testing.assert_allclose(got["eval/loss"], want["neg_K_minus_L_null_bits_per_pixel"], rtol=1e-5)
  np.testing.assert_allclose(got["eval/loss_stderr"], want["neg_K_minus_L_null_stderr"], rtol=1e-4)
  assert ev(params) == got  # the same images and keys at every evaluation

  cfg.method = "one_t"
  res = evaluate.make_test_evaluator(task, cfg, parallel.DataParallel(), key=key)(params)
  assert res["eval/num_batches"] == 2 and np.isfinite(res["eval/loss"])
  cfg.method = "all"
  with pytest.raises(ValueError, match="eval.method"):
    evaluate.make_test_evaluator(task, cfg, parallel.DataParallel(), key=key)
