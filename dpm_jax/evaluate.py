"""Test-set bounds and the Parzen-window estimator.

Three estimates of the bound on the negative log likelihood:
  one t per batch:  the reference code's estimator (and the training loss),
                    averaged over batches with a standard error across them;
  all t:            for each image, sum_{t=1}^{T-1} KL_t + H(beta_0) -
                    H(1 - abar_{T-1}), exact over t, Monte Carlo only over
                    the forward noise; also gives the per-t KL curve;
  stratified t:     K strata of {1..T-1}, one t drawn in each, per image;
                    K network passes per image instead of T-1.
Each is reported as -(K - L_null) in bits per pixel (the paper's Table 1
convention, colour channels summed) and as the negative log-likelihood
bound in bits per dimension on 8-bit data (today's convention).
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import parallel

DiffusionModel = diffusion.DiffusionModel
LN2 = math.log(2.0)


def nll_bits_per_dim(cost_bits_per_pixel, stats: data_lib.DataStats, n_colors: int):
  """-(K - L_null) in bits per pixel -> NLL bound in bits per dimension on 8-bit data.

  Per dimension in model units the bound is -log p(x) <= cost * ln2 / n_colors
  + H(1) nats. Pixels were mapped to model units by x * scale / 255 + shift,
  so a density on 0..255 units is lower by log(255 / scale). With the
  dequantisation one 8-bit bin wide this bounds the discrete log likelihood.
  """
  nats = (np.asarray(cost_bits_per_pixel) * LN2 / n_colors
          + 0.5 * (1.0 + math.log(2.0 * math.pi)) + math.log(255.0 / stats.scale))
  return nats / LN2


def _mean_stderr(values):
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float(values.mean()), float("nan")
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def _eval_batch_size(requested: int, n_test: int, num_devices: int) -> int:
  size = min(requested, n_test)
  size -= size % num_devices
  if size < 1:
    raise ValueError(f"The test split ({n_test} images) is smaller than the "
                     f"{num_devices} devices.")
  return size


def _one_t_losses(model, stats, images, batch_size, *, seed=0):
  """fn(params, num_batches, key, put=None) -> per-batch bound (bits/pixel), one t each.

  Batch i takes batch_size images in a fixed shuffled order (wrapping
  around) and the key fold_in(key, i).
  """
  order = np.random.default_rng(seed).permutation(len(images))
  loss_fn = diffusion.make_loss_fn(model, uniform_noise=stats.uniform_noise, train=False)

  @jax.jit
  def eval_step(params, batch, rng):
    return loss_fn(params, data_lib.to_model_units(batch, stats), rng)[0]

  def losses(params, num_batches, key, put=None):
    out = []
    for i in range(num_batches):
      start = (i * batch_size) % len(images)
      batch = images[np.take(order, np.arange(start, start + batch_size), mode="wrap")]
      out.append(eval_step(params, put(batch) if put else batch, jax.random.fold_in(key, i)))
    return np.asarray(jax.device_get(out), np.float64)

  return losses


def make_test_evaluator(model: DiffusionModel, stats: data_lib.DataStats, test: np.ndarray,
                        eval_config, par, *, key):
  """The periodic test-set bound during training.

  eval_config.method:
    'stratified' (default): for each of up to eval_config.num_images test
        images, one t in each of eval_config.num_strata strata of {1..T-1};
        the standard error is across images.
    'one_t': the reference code's estimate, eval_config.num_batches batches
        with one random t each, the standard error across batches. The KL per t
        is heavy-tailed (on a trained MNIST model the ten smallest t carry
        about half of the bound), so a few batches usually miss the tail: the
        estimate is unbiased but typically optimistic, and its standard error
        too small.

  Returns fn(params) -> {'eval/loss', 'eval/loss_stderr', 'eval/nll_bpd',
  'eval/nll_bpd_stderr', ...}. The same keys and images are used at every
  evaluation, so successive values differ only by the model.
  """
  n_colors = model.config.n_colors
  batch_size = _eval_batch_size(eval_config.batch_size, len(test), par.num_devices)
  method = eval_config.method

  def record(values, extra):
    mean, stderr = _mean_stderr(values)
    return {"eval/loss": mean, "eval/loss_stderr": stderr,
            "eval/nll_bpd": float(nll_bits_per_dim(mean, stats, n_colors)),
            "eval/nll_bpd_stderr": stderr / n_colors, **extra}

  if method == "one_t":
    losses_fn = _one_t_losses(model, stats, test, batch_size, seed=eval_config.seed)

    def evaluate(params):
      losses = losses_fn(params, eval_config.num_batches, key, par.put_batch)
      return record(losses, {"eval/num_batches": len(losses)})

    return evaluate

  if method != "stratified":
    raise ValueError(f"eval.method must be 'stratified' or 'one_t', got {method!r}")
  # Whole batches of a fixed shuffled order, so every call has one shape.
  n = min(eval_config.num_images or len(test), len(test))
  n = max(batch_size, n - n % batch_size)
  order = np.random.default_rng(eval_config.seed).permutation(len(test))
  images = test[np.take(order, np.arange(n), mode="wrap")]
  stratified_bits = _stratified_bits_fn(model, stats, eval_config.num_strata)

  def evaluate(params):
    bits = stratified_bits(params, images, key, batch_size, par.put_batch)
    return record(bits, {"eval/num_images": n})

  return evaluate


def bound_one_t(model: DiffusionModel, params, images: np.ndarray, stats: data_lib.DataStats,
                key, *, num_batches: int = 200, batch_size: int = 100, par=None):
  """The reference code's test-set estimate: many batches, one random t each.

  The standard error is across batches, as the reference code's. `par`: the
  devices each batch is split over (default: see _placement).
  """
  batch_size = min(batch_size, len(images))
  params, put = _placement(params, batch_size, par)
  losses = _one_t_losses(model, stats, images, batch_size)(params, num_batches, key, put)
  return _summary(losses, stats, model.config.n_colors,
                  extra={"per_batch": losses, "num_batches": num_batches,
                         "num_images": int(min(len(images), num_batches * batch_size))})


def make_kl_at_t(model: DiffusionModel, stats: data_lib.DataStats):
  """kl_at_t(params, images, t, key) -> mean KL (nats per dim) per image, shape (B,).

  t is one time step per image, shape (B,).
  """

  def kl_at_t(params, images, t, key):
    k_noise, k_unif = jax.random.split(key)
    noise = jax.random.normal(k_noise, images.shape, images.dtype)
    unif = jax.random.uniform(k_unif, images.shape, images.dtype)
    beta_arr = model.apply(params, images.dtype, method=DiffusionModel.beta_arr)
    tf = t.astype(images.dtype)
    x_t, mu_q, sigma_q, _ = diffusion.forward_diffusion_sample(
        images, tf, beta_arr, noise=noise, uniform=unif, uniform_noise=stats.uniform_noise)
    mu, sigma = model.apply(params, x_t, tf, method=DiffusionModel.get_mu_sigma)
    return jnp.mean(diffusion.normal_kl(mu_q, sigma_q, mu, sigma), axis=(1, 2, 3))

  return kl_at_t


def _bound_from_kl_sum(kl_sum, beta_arr, n_colors):
  """Per-image -(K - L_null) bits/pixel from sum_t KL_t (nats per dim)."""
  h_start, h_end, _ = diffusion.bound_terms(beta_arr)
  return (kl_sum + h_start - h_end) / LN2 * n_colors


def _placement(params, batch_size: int, par):
  """(params, put): the parameters replicated on par's devices (default: the
  most local devices dividing batch_size) and a function placing a batch
  split over them (a batch they do not divide stays whole)."""
  par = par or parallel.DataParallel.for_batch(batch_size)
  return par.put_replicated(params), (
      lambda batch: par.put_batch(batch) if len(batch) % par.num_devices == 0 else batch)


def bound_all_t(model: DiffusionModel, params, images: np.ndarray, stats: data_lib.DataStats,
                key, *, batch_size: int = 100, par=None):
  """The bound summed over every t = 1 .. T-1 for each image.

  Args:
    model, params: the model.
    images: uint8 test images (N, H, W, C).
    stats: the run's data stats.
    key: PRNG key; image i, time step t uses fold_in(fold_in(key, i_batch), t).
    batch_size: images per network call; all T-1 steps run in one scan.
    par: the devices each batch is split over (default: see _placement).

  Returns:
    dict with 'per_image' (N,) bits/pixel, 'kl_per_t' (T-1,) mean KL nats
    per dim over images, and the mean/stderr in both conventions.
  """
  cfg = model.config
  T = cfg.trajectory_length
  beta_arr = model.apply(params, jnp.float32, method=DiffusionModel.beta_arr)
  kl_at_t = make_kl_at_t(model, stats)
  params, put = _placement(params, batch_size, par)

  @jax.jit
  def per_batch(params, batch, bkey):
    images = data_lib.to_model_units(batch, stats)

    def body(total, t):
      kl = kl_at_t(params, images, jnp.full((images.shape[0],), t), jax.random.fold_in(bkey, t))
      return total + kl, jnp.sum(kl)
    total, kl_t = jax.lax.scan(body, jnp.zeros(images.shape[0]), jnp.arange(1, T))
    return total, kl_t

  per_image, kl_curve = [], np.zeros(T - 1)
  for b, start in enumerate(range(0, len(images), batch_size)):
    batch = images[start:start + batch_size]
    total, kl_t = per_batch(params, put(batch), jax.random.fold_in(key, b))
    per_image.append(np.asarray(total))
    kl_curve += np.asarray(kl_t, np.float64)
  kl_sum = np.concatenate(per_image)
  bits = np.asarray(_bound_from_kl_sum(jnp.asarray(kl_sum), beta_arr, cfg.n_colors))
  return _summary(bits, stats, cfg.n_colors, extra={
      "per_image": bits, "kl_per_t": kl_curve / len(images), "t": np.arange(1, T)})


def _stratified_bits_fn(model: DiffusionModel, stats: data_lib.DataStats, num_strata: int):
  """fn(params, uint8 images, key, batch_size, put=None) -> per-image bound (bits/pixel).

  Per image, sum_t KL_t is estimated by sum_k n_k KL_{t_k}, t_k uniform in
  stratum k of size n_k; batch b uses fold_in(key, b), and `put` (if given)
  places each batch on the devices.
  """
  T = model.config.trajectory_length
  edges = np.linspace(1, T, num_strata + 1).round().astype(int)
  if num_strata < 1 or np.any(np.diff(edges) < 1):
    raise ValueError(f"num_strata={num_strata} must be in 1..{T - 1} (the time steps).")
  lo, sizes = jnp.asarray(edges[:-1]), jnp.asarray(np.diff(edges), jnp.float32)
  kl_at_t = make_kl_at_t(model, stats)

  @jax.jit
  def per_batch(params, batch, bkey):
    images = data_lib.to_model_units(batch, stats)
    n = images.shape[0]

    def body(total, k):
      kk = jax.random.fold_in(bkey, k)
      t = lo[k] + jax.random.randint(jax.random.fold_in(kk, 2**31 - 1), (n,), 0, sizes[k].astype(jnp.int32))
      return total + sizes[k] * kl_at_t(params, images, t, kk), None
    total, _ = jax.lax.scan(body, jnp.zeros(n), jnp.arange(num_strata))
    return total

  def bits(params, images, key, batch_size, put=None):
    put = put or (lambda batch: batch)
    totals = [per_batch(params, put(images[s:s + batch_size]), jax.random.fold_in(key, b))
              for b, s in enumerate(range(0, len(images), batch_size))]
    kl_sum = np.concatenate([np.asarray(jax.device_get(t)) for t in totals])
    beta_arr = model.apply(params, jnp.float32, method=DiffusionModel.beta_arr)
    return np.asarray(_bound_from_kl_sum(jnp.asarray(kl_sum), beta_arr, model.config.n_colors))

  return bits


def bound_stratified(model: DiffusionModel, params, images: np.ndarray,
                     stats: data_lib.DataStats, key, *, num_strata: int = 10,
                     batch_size: int = 100, par=None):
  """A cheaper unbiased estimate: one t in each of num_strata strata of {1..T-1}.

  sum_t KL_t is estimated per image by sum_k n_k KL_{t_k}, with t_k uniform
  in stratum k of size n_k. `par`: the devices each batch is split over
  (default: see _placement).
  """
  params, put = _placement(params, batch_size, par)
  bits = _stratified_bits_fn(model, stats, num_strata)(params, images, key, batch_size, put)
  return _summary(bits, stats, model.config.n_colors,
                  extra={"per_image": bits, "num_strata": num_strata})


def _summary(bits_per_image, stats, n_colors, extra):
  mean, stderr = _mean_stderr(bits_per_image)
  out = {"neg_K_minus_L_null_bits_per_pixel": mean,
         "neg_K_minus_L_null_stderr": stderr,
         "K_minus_L_null_bits_per_pixel": -mean,
         "nll_bits_per_dim": float(nll_bits_per_dim(mean, stats, n_colors)),
         "nll_bits_per_dim_stderr": stderr / n_colors,
         "num_images": int(np.size(bits_per_image))}
  out.update(extra)  # may override num_images
  return out


# ----------------------------------------------------------------------------
# Parzen windows (the paper's MNIST table metric).


def parzen_log_likelihood(samples, points, sigma: float, *, batch_size: int = 500):
  """log p(x) per point under an isotropic Gaussian Parzen window on samples (nats).

  log p(x) = logsumexp_i(-|x - s_i|^2 / (2 sigma^2)) - log N - d/2 log(2 pi sigma^2).
  """
  samples = jnp.asarray(samples, jnp.float32).reshape(len(samples), -1)
  points = np.asarray(points, np.float32).reshape(len(points), -1)
  n, d = samples.shape
  s_sq = jnp.sum(samples**2, axis=1)

  @jax.jit
  def chunk(x):
    dist = jnp.sum(x**2, axis=1)[:, None] - 2.0 * x @ samples.T + s_sq[None, :]
    return (jax.nn.logsumexp(-dist / (2.0 * sigma**2), axis=1) - math.log(n)
            - 0.5 * d * math.log(2.0 * math.pi * sigma**2))

  return np.concatenate([np.asarray(chunk(jnp.asarray(points[i:i + batch_size])))
                         for i in range(0, len(points), batch_size)])


def parzen_select_and_score(samples, validation, test, sigmas: Optional[np.ndarray] = None):
  """Chooses the window on a validation split and reports the test log likelihood.

  Args:
    samples: model samples in [0, 1] pixel units, (N, ...).
    validation, test: held-out data in the same units.
    sigmas: candidate windows (default: 20 log-spaced values in [0.05, 0.5]).

  Returns:
    dict with 'sigma', 'validation_nats' per sigma, and the test mean and
    standard error in nats and bits per image.
  """
  sigmas = np.geomspace(0.05, 0.5, 20) if sigmas is None else np.asarray(sigmas)
  val_scores = [float(np.mean(parzen_log_likelihood(samples, validation, s))) for s in sigmas]
  best = float(sigmas[int(np.argmax(val_scores))])
  ll = parzen_log_likelihood(samples, test, best)
  mean, stderr = _mean_stderr(ll)
  return {"sigma": best, "sigmas": sigmas.tolist(), "validation_nats": val_scores,
          "test_nats": mean, "test_nats_stderr": stderr,
          "test_bits": mean / LN2, "test_bits_stderr": stderr / LN2,
          "num_samples": int(len(samples)), "num_test": int(len(test))}
