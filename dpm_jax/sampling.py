"""The reverse trajectory: sampling, inpainting, denoising and perturbed posteriors.

Indexing: x_t is the state after forward step t (t = 0 .. T-1), so the
forward trajectory runs x_data -> x_0 -> ... -> x_{T-1} ~ N(0, I). The
learned reverse kernels map x_t to x_{t-1} for t = T-1 .. 1; the first
forward step is reversed by a fixed kernel, the isotropic one at t = 0:
x_data ~ N(x_0 sqrt(1 - beta_0), beta_0). The reference sampler stopped at
x_0 (config switch `skip_first_step`).

The trajectory runs as one jitted program called on chunks of steps (a stop
request is honoured between them); each step draws its noise from
fold_in(key, t), so a sample is a function of the key alone, whatever the
chunks.

Conditioning, applied to every reverse step including the fixed one
(paper section 2.5, "distribution multiplication"):
  inpainting: for known pixels mu = the known value and sigma = 0;
  denoising:  multiply the step's Gaussian by N(y, sigma_d^2);
  posterior:  shift the step's mean by sigma^2 * grad log r(mu).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import networks
from dpm_jax import errors
from dpm_jax import execution
from dpm_jax import parallel


def condition_step(mu, sigma, *, mask=None, known=None, y=None, denoise_sigma=None,
                   log_r: Optional[Callable] = None):
  """Applies the conditioning of one reverse step to its (mu, sigma).

  Args:
    mu, sigma: the step's Gaussian, (B, H, W, C) (sigma may broadcast).
    mask: boolean, True where the pixel is known (inpainting).
    known: the known pixel values (model units), shape of mu.
    y: a noisy observation (denoising), shape of mu.
    denoise_sigma: the observation noise's standard deviation.
    log_r: x -> log r(x) per image, (B, H, W, C) -> (B,) (or a scalar sum),
      differentiable; the perturbation of paper section 2.5.

  Returns:
    (mu, sigma) of the conditioned step.
  """
  sigma = jnp.broadcast_to(sigma, mu.shape)
  if log_r is not None:
    grad = jax.grad(lambda x: jnp.sum(log_r(x)))(mu)
    mu = mu + sigma**2 * grad
  if y is not None:
    new_sigma = (sigma**-2 + denoise_sigma**-2) ** -0.5
    mu = new_sigma**2 * (mu / sigma**2 + y / denoise_sigma**2)
    sigma = new_sigma
  if mask is not None:
    mu = jnp.where(mask, known, mu)
    sigma = jnp.where(mask, 0.0, sigma)
  return mu, sigma


def make_sampler(model: nn.Module, *, num_images: int,
                 skip_first_step: bool = False, record_t: Sequence[int] = (),
                 log_r: Optional[Callable] = None,
                 par: Optional[parallel.DataParallel] = None,
                 steps_per_call: int = 100,
                 shape: Optional[Sequence[int]] = None) -> Callable:
  """Builds a sampler of the reverse trajectory of any model (dpm_jax.diffusion).

  x_{T-1} comes from the process's prior, then its reverse kernels apply.
  Conditioning applies to Gaussian models only.

  Args:
    num_images: batch of samples drawn per call.
    skip_first_step: stop at x_0 as the reference sampler (no fixed step).
    record_t: time steps whose states x_t to return as well (x_{T-1} is the
      start; use -1 for the final sample, which is also returned on its own).
    log_r: a differentiable log-perturbation for posterior sampling.
    par: the devices the images are split over (dpm_jax.parallel); default:
      the most local devices whose count divides num_images. The samples do
      not depend on it: the noise is drawn for the whole batch.
    steps_per_call: reverse steps per jitted call; the samples do not depend on it.
    shape: the shape of one sample, default model.data_shape; another only for
      a model that applies at any size (convolutions only).

  Returns:
    fn(params, key, *, should_stop=None, mask=None, known=None, y=None,
    denoise_sigma=None) -> samples (B, ...), or (samples, states)
    with states (len(record_t), B, ...) when record_t is given. Denoising
    starts from y (as the reference code), inpainting from N(0, I) with the
    known pixels set. A stop request raises Stopped.
  """
  T = model.config.trajectory_length
  shape = (num_images,) + tuple(shape or model.data_shape)
  record = jnp.asarray(list(record_t) or [-2], jnp.int32)
  par = par or execution.forward_par(num_images)
  execution.check_batch_divides(num_images, par.num_devices, "num_images")
  split = par.constrain_batch
  length = max(1, min(steps_per_call, T - 1))

  def conditioner(cond):
    if cond["mask"] is None and cond["y"] is None and log_r is None:
      return lambda p: p
    return lambda p: condition_step(*p, log_r=log_r, **cond)

  @jax.jit
  def chunk(params, key, cond, x, states, t_first):
    """Reverse steps t_first .. t_first - length + 1 (those >= 1) from x; the first call
    starts x at the prior (or y), and the call that reaches t = 1 ends with the fixed
    first step. One program for every call."""
    process = model.apply(params, jnp.float32, method="process")
    condition = conditioner(cond)
    prior = (cond["y"] if cond["y"] is not None else
             process.prior_sample(jax.random.fold_in(key, T), shape, jnp.float32))
    x = jnp.where(t_first == T - 1, prior, x)
    if cond["mask"] is not None:
      x = jnp.where(cond["mask"], cond["known"], x)
    x = split(x.astype(jnp.float32))
    states = jnp.where(t_first == T - 1, _record(states, record, T - 1, x), states)

    def body(carry, t):
      x, states = carry
      p = condition(model.apply(params, x, t.astype(jnp.float32), method="reverse"))
      new = split(process.reverse_sample(p, jax.random.fold_in(key, t)).astype(jnp.float32))
      x = jnp.where(t >= 1, new, x)  # steps below t = 1 fill the last call: no-ops
      return (x, jnp.where(t >= 1, _record(states, record, t - 1, x), states)), None

    (x, states), _ = jax.lax.scan(body, (x, states), t_first - jnp.arange(length))
    last = t_first - length + 1 <= 1
    if not skip_first_step:
      p = condition(process.first_step(x))
      x = jnp.where(last, process.reverse_sample(p, jax.random.fold_in(key, 0)).astype(
          jnp.float32), x)
    return x, jnp.where(last, _record(states, record, -1, x), states)

  def sampler(params, key, *, should_stop=None, mask=None, known=None, y=None,
              denoise_sigma=None):
    if y is not None and denoise_sigma is None:
      raise ValueError("denoising needs denoise_sigma with y")
    if mask is not None:
      mask = jnp.broadcast_to(mask, shape)
    cond = dict(mask=mask, known=known, y=y, denoise_sigma=denoise_sigma)
    # The parameters, replicated on the sampler's devices (a no-op when they
    # already are; a copy when training placed them on other devices).
    params = par.put_replicated(params)
    x = jnp.zeros(shape, jnp.float32)
    states = jnp.zeros((record.shape[0],) + shape, jnp.float32)
    for t_first in range(T - 1, 0, -length):
      if should_stop is not None and should_stop():
        raise errors.Stopped()
      x, states = chunk(params, key, cond, x, states, jnp.asarray(t_first, jnp.int32))
    return (x, states) if record_t else x

  return sampler


def _record(states, record, t, x):
  hit = (record == t).reshape((-1,) + (1,) * x.ndim)
  return jnp.where(hit, x[None], states)


# ----------------------------------------------------------------------------
# Masks and perturbations.

MASKS = config_lib.MASKS


def inpaint_mask(kind: str, spatial_width: int, n_colors: int = 1, *, height: Optional[int] = None,
                 box: Optional[Sequence[int]] = None) -> np.ndarray:
  """A boolean (H, W, C) mask, True where the pixel is known.

  Args:
    kind: 'right_half' (the reference code's mask: the left half is generated),
      'left_half', 'centre_square' (the central half of each side unknown),
      'random_pixels' (half of them known, a fixed draw) or 'box' (`box` unknown).
    spatial_width, n_colors: W and C; height: H (default W).
    box: (x, y, width, height) of the unknown region, for kind='box'.

  Raises:
    errors.UserError: an unknown kind, or a box that is empty or leaves the image.
  """
  w, h = spatial_width, height or spatial_width
  mask = np.zeros((h, w, n_colors), bool)
  if kind == "right_half":
    mask[:, w // 2:] = True
  elif kind == "left_half":
    mask[:, :w // 2] = True
  elif kind == "centre_square":
    mask[:] = True
    mask[h // 4:h - h // 4, w // 4:w - w // 4] = False
  elif kind == "random_pixels":
    known = np.random.default_rng(0).random((h, w)) < 0.5
    mask[:] = known[:, :, None]
  elif kind == "box":
    x, y, bw, bh = (int(v) for v in box)
    if bw < 1 or bh < 1 or x < 0 or y < 0 or x + bw > w or y + bh > h:
      raise errors.UserError(f"The box (x={x}, y={y}, width={bw}, height={bh}) must lie within the "
                       f"{w} x {h} image and not be empty.")
    mask[:] = True
    mask[y:y + bh, x:x + bw] = False
  else:
    raise errors.UserError(f"Unknown mask {kind!r}; choose one of {MASKS + ('box',)}.")
  return mask


def central_box(width: int, height: int) -> tuple:
  """(x, y, w, h) of the central third of an image (the paper's Figure 5)."""
  return (width // 3, height // 3, width - 2 * (width // 3), height - 2 * (height // 3))


def downsampling_log_r(y_low, factor: int, noise_std: float) -> Callable:
  """log r(x) for super-resolution: y_low = mean_pool(x, factor) + N(0, noise_std^2).

  r(x) = N(y_low; mean_pool(x), noise_std^2), a Gaussian likelihood of a
  linear measurement; multiplying the model by it samples high-resolution
  images consistent with a low-resolution one (paper section 2.5).
  """
  y_low = jnp.asarray(y_low)

  def log_r(x):
    resid = networks.mean_pool(x, factor) - y_low
    return -0.5 * jnp.sum(resid**2, axis=(1, 2, 3)) / noise_std**2
  return log_r


def gaussian_log_r(y, noise_std: float) -> Callable:
  """log r(x) = log N(y; x, noise_std^2) per image, up to a constant."""
  y = jnp.asarray(y)

  def log_r(x):
    return -0.5 * jnp.sum((x - y) ** 2, axis=tuple(range(1, x.ndim))) / noise_std**2
  return log_r


def default_record_t(trajectory_length: int, num_intermediate: int = 4) -> list:
  """The start x_{T-1}, num_intermediate evenly spaced states, x_0, and the sample (-1)."""
  T, n = trajectory_length, num_intermediate
  inner = [round(T * (n + 1 - k) / (n + 1)) for k in range(1, n + 1)]
  return [T - 1] + [t for t in inner if 0 < t < T - 1] + [0, -1]


def label_of_t(t: int) -> str:
  return "sample" if t == -1 else f"t={t}"


# ----------------------------------------------------------------------------
# The modes of the sampling entry point.

MODES = ("sample", "inpaint", "denoise", "superres")
# Key streams beside the per-step ones (which use t = 0 .. T).
OBSERVATION_STREAM = 2**31 - 1


def generate(model: nn.Module, params: Any, stats: data_lib.DataStats, mode: str, key: jax.Array, *,
             num_images: int, true_images=None, mask_kind: str = "right_half",
             box: Optional[Sequence[int]] = None, denoise_sigma: float = 1.0,
             superres_factor: int = 4, superres_noise: float = 0.1,
             image_size: Optional[Sequence[int]] = None, record_t: Sequence[int] = (),
             skip_first_step: bool = False,
             should_stop: Optional[Callable[[], bool]] = None) -> dict:
  """Runs one sampling mode and returns its arrays in [0, 1] pixel units.

  Args:
    stats: the run's DataStats (pixels <-> model units).
    mode: 'sample', 'inpaint' (mask_kind known; 'box': all but `box`), 'denoise'
      (observation x + denoise_sigma * N(0, I) in model units; the reference used
      1) or 'superres' (a mean-pooled observation, by superres_factor, with
      superres_noise, sampled through the perturbed posterior of section 2.5).
    true_images: uint8 images (num_images, H, W, C), needed except for 'sample'.
    image_size: (H, W) of the samples, for models that apply at any size
      (convolutions only); default the model's, or true_images'.
    record_t, skip_first_step, should_stop: as make_sampler's.

  Returns:
    dict with 'samples' (N, H, W, C), 'states' (K, N, H, W, C) if record_t,
    'record_t', and for conditional modes 'true' and 'observed' (and 'mask').
    An inpainting's 'observed' shows the unknown pixels as the noise the
    reverse trajectory starts from (the paper's Figure 5).

  Raises:
    errors.UserError: an unknown mode, too few true images, a noise level <= 0 (the
      observation would be exact: its Gaussian has no width) or a factor
      that does not divide the image width.
  """
  if mode not in MODES:
    raise errors.UserError(f"Unknown mode {mode!r}; choose one of {MODES}.")
  for name, value in (("denoise_sigma", denoise_sigma), ("superres_noise", superres_noise)):
    if not value > 0:
      raise errors.UserError(f"{name} must be > 0 (the observation's noise), got {value}.")
  cfg = model.config
  if true_images is not None:
    image_size = true_images.shape[1:3]
  h, w = image_size or model.data_shape[:2]
  shape = (num_images, h, w, cfg.n_colors)
  out = {"record_t": np.asarray(list(record_t), np.int32)}
  cond, log_r = {}, None
  if mode != "sample":
    if true_images is None or len(true_images) < num_images:
      raise errors.UserError(f"mode {mode!r} needs {num_images} true images.")
    x_true = data_lib.to_model_units(true_images[:num_images], stats)
    out["true"] = data_lib.to_pixels(x_true, stats)
    k_obs = jax.random.fold_in(key, OBSERVATION_STREAM)
    if mode == "inpaint":
      mask = inpaint_mask(mask_kind, w, cfg.n_colors, height=h, box=box)
      cond = {"mask": jnp.asarray(mask), "known": x_true}
      start = jax.random.normal(jax.random.fold_in(key, cfg.trajectory_length), shape)
      out["mask"] = mask
      out["observed"] = np.where(mask, out["true"], data_lib.to_pixels(start, stats))
    elif mode == "denoise":
      y = x_true + denoise_sigma * jax.random.normal(k_obs, x_true.shape)
      cond = {"y": y, "denoise_sigma": jnp.asarray(denoise_sigma, jnp.float32)}
      out["observed"] = data_lib.to_pixels(y, stats)
    else:
      if h % superres_factor or w % superres_factor:
        raise errors.UserError(f"superres_factor={superres_factor} does not divide the {w} x {h} "
                               "image.")
      y_low = (networks.mean_pool(x_true, superres_factor)
               + superres_noise * jax.random.normal(k_obs, (num_images, h // superres_factor,
                                                            w // superres_factor, cfg.n_colors)))
      log_r = downsampling_log_r(y_low, superres_factor, superres_noise)
      out["observed"] = data_lib.to_pixels(networks.upsample_nearest(y_low, superres_factor), stats)
  sampler = make_sampler(model, num_images=num_images, skip_first_step=skip_first_step,
                         record_t=record_t, log_r=log_r, shape=(h, w, cfg.n_colors))
  result = sampler(params, key, should_stop=should_stop, **cond)
  samples, states = result if record_t else (result, None)
  out["samples"] = data_lib.to_pixels(samples, stats)
  if states is not None:
    out["states"] = data_lib.to_pixels(states, stats)
  return out
