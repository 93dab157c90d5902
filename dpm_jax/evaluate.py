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
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import execution
from dpm_jax import outputs
from dpm_jax import parallel
from dpm_jax import plotting
from dpm_jax import sampling

if TYPE_CHECKING:
  from dpm_jax import experiment as experiment_lib

METHODS = ("stratified", "all_t", "one_t")
# The random stream of the stratified estimate's t draws, beside the per-stratum keys.
T_STREAM = 2**31 - 1


def _poll(should_stop: Optional[Callable[[], bool]]) -> None:
  if should_stop is not None and should_stop():
    raise errors.Stopped()


def _mean_stderr(values):
  """Mean and standard error; the error is NaN (undefined) for fewer than 2 values."""
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return float(values.mean()), float("nan")
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


def report(result: dict) -> dict:
  """A bound's result as JSON-able data: arrays dropped, undefined values (NaN) as None."""
  out = {}
  for key, value in result.items():
    if isinstance(value, np.ndarray):
      continue
    if isinstance(value, float) and not math.isfinite(value):
      value = None
    out[key] = value
  return out


def check_finite(result: dict, what: str = "the bound") -> None:
  """Raises errors.UserError if the bound (K, K - L_null) of a result is not finite."""
  for key in ("K_bits", "K_minus_L_null_bits"):
    value = result.get(key)
    if value is None or not math.isfinite(value):
      raise errors.UserError(
          f"{what} is not finite ({key} = {value}): the model's parameters or the data hold "
          "NaN or Inf, or the model diverged. Nothing was written; evaluate an earlier "
          "checkpoint with --step.")


def kl_per_example(task, params, x_0, t, key):
  """Mean KL over dimensions per example (B,) at time steps t (B,): the per-t KL of
  diffusion.kl_at_t with noise (and dequantisation) drawn from `key`."""
  k_noise, k_unif = jax.random.split(key)
  noise = task.model.Process.draw_noise(k_noise, x_0.shape, x_0.dtype)
  if task.units.uniform_noise:
    x_0 = diffusion.dequantize(x_0, jax.random.uniform(k_unif, x_0.shape, x_0.dtype),
                               task.units.uniform_noise)
  kl, _ = diffusion.kl_at_t(task.model, params, x_0, t.astype(x_0.dtype), noise)
  return jnp.mean(kl, axis=tuple(range(1, kl.ndim)))


def bound_from_kl_sum(task, params, x_0, kl_sum):
  """Per-example -(K - L_null) in bits per unit from sum_t KL_t (nats per dim)."""
  h = task.model.apply(params, x_0.dtype, method="process").entropies(x_0)
  h_diff = jnp.broadcast_to(h.start - h.end, x_0.shape)
  nats = kl_sum + jnp.mean(h_diff, axis=tuple(range(1, x_0.ndim)))
  return nats / diffusion.LN2 * task.model.unit_dims


def make_test_evaluator(task: experiment_lib.Task, eval_config: ml_collections.ConfigDict,
                        par: parallel.DataParallel, *, key: jax.Array) -> Callable[[Any], dict]:
  """The periodic test-set bound during training: `bound` by eval_config on par's devices,
  with the same examples and keys at every evaluation, so that successive values differ
  only by the model.

  Returns:
    fn(params, should_stop=None) -> {'eval/loss', 'eval/loss_stderr', the units' extras
    as 'eval/<name>', 'eval/num_images' or 'eval/num_batches'}.
  """
  ev = eval_config.copy_and_resolve_references()
  if ev.method not in METHODS:
    raise ValueError(f"eval.method must be one of {METHODS}, got {ev.method!r}")
  examples = task.data.test
  ev.batch_size = min(ev.batch_size, len(examples))
  ev.batch_size -= ev.batch_size % par.num_devices
  if ev.batch_size < 1:
    raise errors.UserError(
        f"The test split ({len(examples)} examples) is smaller than the {par.num_devices} "
        "devices each test batch is split over: hold out more examples (data.test_fraction "
        "for a folder), or use fewer devices (--cpu_devices).")
  if ev.method == "stratified":
    examples = test_examples(examples, ev.num_images, ev.batch_size, ev.seed)
  count = ({"eval/num_batches": ev.num_batches} if ev.method == "one_t"
           else {"eval/num_images": len(examples)})

  def evaluate(params, should_stop=None):
    result = bound(task, params, examples, key, ev, par=par, should_stop=should_stop)
    mean, stderr = -result["K_minus_L_null_bits"], result["neg_K_minus_L_null_stderr"]
    extras = {"eval/" + k: v for k, v in task.units.extras(mean, stderr).items()}
    return {"eval/loss": mean, "eval/loss_stderr": stderr, **extras, **count}

  return evaluate


def test_examples(test: np.ndarray, num_images: int, batch_size: int, seed: int) -> np.ndarray:
  """The examples of a test bound: num_images (0: all) of a fixed shuffled order (seed),
  rounded down to whole batches (at least one, wrapping around), so that every batch has
  one shape."""
  n = min(num_images or len(test), len(test))
  n = max(batch_size, n - n % batch_size)
  order = np.random.default_rng(seed).permutation(len(test))
  return test[np.take(order, np.arange(n), mode="wrap")]


# The estimators' defaults are config.eval's (one default per setting).
_EVAL = {name: field.default for name, field in config_lib.EVAL.items()}


def bound_one_t(task: experiment_lib.Task, params: Any, examples: np.ndarray, key: jax.Array, *,
                num_batches: int = _EVAL["num_batches"], batch_size: int = _EVAL["batch_size"],
                seed: int = _EVAL["seed"], par=None,
                should_stop: Optional[Callable[[], bool]] = None):
  """The reference code's test-set estimate: many batches, one random t each.

  Batch i takes batch_size examples of a fixed shuffled order (seed, wrapping around) and
  the key fold_in(key, i). The standard error is across batches, as the reference code's.
  `par`: the devices each batch is split over (default: see _placement).
  """
  batch_size = min(batch_size, len(examples))
  _, params, put = _placement(params, batch_size, par)
  order = np.random.default_rng(seed).permutation(len(examples))
  loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.units.uniform_noise, train=False)

  @jax.jit
  def eval_step(params, batch, rng):
    return loss_fn(params, task.units.to_model(batch), rng)[0]

  out = []
  for i in range(num_batches):
    _poll(should_stop)
    start = (i * batch_size) % len(examples)
    batch = examples[np.take(order, np.arange(start, start + batch_size), mode="wrap")]
    out.append(eval_step(params, put(batch), jax.random.fold_in(key, i)))
  losses = np.asarray(jax.device_get(out), np.float64)
  return _summary(task, params, losses, extra={
      "per_batch": losses, "num_batches": num_batches,
      "num_images": int(min(len(examples), num_batches * batch_size))})


def _placement(params, batch_size: int, par):
  """(par, params, put): the devices (default: the most local devices dividing
  batch_size), the parameters replicated on them, and a function placing a batch split
  over them (a batch they do not divide stays whole)."""
  par = par or execution.forward_par(batch_size)
  return par, par.put_replicated(params), (
      lambda batch: par.put_batch(batch) if len(batch) % par.num_devices == 0 else batch)


def bound_all_t(task: experiment_lib.Task, params: Any, examples: np.ndarray, key: jax.Array, *,
                batch_size: int = _EVAL["batch_size"], par: Optional[parallel.DataParallel] = None,
                progress: Optional[Callable[[int, int], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None) -> dict:
  """The bound summed over every t = 1 .. T-1 for each example.

  Args:
    examples: stored test examples (N, ...), e.g. uint8 images.
    key: PRNG key; example i, time step t uses fold_in(fold_in(key, i_batch), t).
    batch_size: examples per network call; all T-1 steps run in one scan.
    par: the devices each batch is split over (default: see _placement).
    progress: called as progress(batches done, batches) after each batch.
    should_stop: polled before each batch; a stop request raises Stopped.

  Returns:
    dict with 'per_image' (N,) bits/unit, 'kl_per_t' (T-1,) mean KL nats
    per dim over examples, and the mean/stderr of the bound.
  """
  T = task.model.config.trajectory_length
  _, params, put = _placement(params, batch_size, par)

  @jax.jit
  def per_batch(params, batch, bkey):
    x_0 = task.units.to_model(batch)

    def body(total, t):
      kl = kl_per_example(task, params, x_0, jnp.full((x_0.shape[0],), t),
                          jax.random.fold_in(bkey, t))
      return total + kl, jnp.sum(kl)
    total, kl_t = jax.lax.scan(body, jnp.zeros(x_0.shape[0]), jnp.arange(1, T))
    return bound_from_kl_sum(task, params, x_0, total), kl_t

  bits, kl_curve = [], np.zeros(T - 1)
  starts = range(0, len(examples), batch_size)
  for b, start in enumerate(starts):
    _poll(should_stop)
    batch_bits, kl_t = per_batch(params, put(examples[start:start + batch_size]),
                                 jax.random.fold_in(key, b))
    bits.append(np.asarray(batch_bits))
    kl_curve += np.asarray(kl_t, np.float64)
    if progress is not None:
      progress(b + 1, len(starts))
  bits = np.concatenate(bits)
  return _summary(task, params, bits, extra={
      "per_image": bits, "kl_per_t": kl_curve / len(examples), "t": np.arange(1, T)})


def bound_stratified(task: experiment_lib.Task, params: Any, examples: np.ndarray, key: jax.Array, *,
                     num_strata: int = _EVAL["num_strata"], batch_size: int = _EVAL["batch_size"],
                     par: Optional[parallel.DataParallel] = None,
                     should_stop: Optional[Callable[[], bool]] = None) -> dict:
  """A cheaper unbiased estimate: one t in each of num_strata strata of {1..T-1}.

  sum_t KL_t is estimated per example by sum_k n_k KL_{t_k}, with t_k uniform
  in stratum k of size n_k; batch b uses fold_in(key, b). `par`: the devices
  each batch is split over (default: see _placement).
  """
  par, params, put = _placement(params, batch_size, par)
  T = task.model.config.trajectory_length
  edges = np.linspace(1, T, num_strata + 1).round().astype(int)
  if num_strata < 1 or np.any(np.diff(edges) < 1):
    raise ValueError(f"num_strata={num_strata} must be in 1..{T - 1} (the time steps).")
  lo, sizes = jnp.asarray(edges[:-1]), jnp.asarray(np.diff(edges), jnp.float32)

  @jax.jit
  def per_batch(params, batch, bkey):
    x_0 = task.units.to_model(batch)
    n = x_0.shape[0]

    def body(total, k):
      kk = jax.random.fold_in(bkey, k)
      t = lo[k] + jax.random.randint(jax.random.fold_in(kk, T_STREAM), (n,), 0,
                                     sizes[k].astype(jnp.int32))
      return total + sizes[k] * kl_per_example(task, params, x_0, t, kk), None
    total, _ = jax.lax.scan(body, jnp.zeros(n), jnp.arange(num_strata))
    return bound_from_kl_sum(task, params, x_0, total)

  out = []
  for b, s in enumerate(range(0, len(examples), batch_size)):
    _poll(should_stop)
    out.append(per_batch(params, put(examples[s:s + batch_size]), jax.random.fold_in(key, b)))
  # DataParallel.to_host: each result from every process.
  bits = np.concatenate([par.to_host(o) for o in out])
  return _summary(task, params, bits, extra={"per_image": bits, "num_strata": num_strata})


def bound(task: experiment_lib.Task, params: Any, examples: np.ndarray, key: jax.Array,
          eval_config: ml_collections.ConfigDict, *, par=None, progress=None,
          should_stop=None) -> dict:
  """The bound by eval_config.method ('stratified', 'all_t' or 'one_t') with its settings
  (config.eval's fields), batches of eval_config.batch_size."""
  ev = eval_config
  if ev.method == "all_t":
    return bound_all_t(task, params, examples, key, batch_size=ev.batch_size, par=par,
                       progress=progress, should_stop=should_stop)
  if ev.method == "stratified":
    return bound_stratified(task, params, examples, key, num_strata=ev.num_strata,
                            batch_size=ev.batch_size, par=par, should_stop=should_stop)
  return bound_one_t(task, params, examples, key, num_batches=ev.num_batches,
                     batch_size=ev.batch_size, seed=ev.seed, par=par, should_stop=should_stop)


def evaluate_run(task: experiment_lib.Task, run, eval_config: ml_collections.ConfigDict,
                 key: jax.Array, *, parzen_samples: int = 0, parzen_validation: int = 1000,
                 output_dir: Optional[str] = None, progress=None, should_stop=None) -> dict:
  """The bound of a run (dpm_jax.rundir.Run) on its test examples by eval_config (config.eval's
  fields; method may also be 'all_t'), and, with parzen_samples, the Parzen window; writes
  eval_<method>_test.json into output_dir (default: the run's directory; all_t also
  kl_per_t_test.npz/.png; Parzen: eval_parzen_test.json), with _raw before _test for
  the raw parameters of a run that keeps their moving average.

  Returns:
    The report (with 'parzen' when asked for) and 'written', the files' paths.

  Raises:
    errors.UserError: settings outside the run's range, or a bound that is not finite
      (then nothing is written).
  """
  ev, workdir, start = eval_config, output_dir or run.workdir, time.time()
  raw = "_raw" if run.params_kind == "raw" and run.config.train.ema_decay else ""
  T = run.config.model.trajectory_length
  if ev.method == "stratified" and ev.num_strata > T - 1:
    raise errors.UserError(f"--num_strata={ev.num_strata} exceeds the run's {T - 1} time steps "
                           "t = 1..T-1.")
  if parzen_samples and parzen_validation > len(task.data.train):
    raise errors.UserError(f"--parzen_validation={parzen_validation} exceeds the run's "
                           f"{len(task.data.train)} training examples.")
  test = test_examples(task.data.test, ev.num_images, ev.batch_size, ev.seed)
  result = bound(task, run.params, test, key, ev, progress=progress, should_stop=should_stop)
  out = report(result)
  out.update(method=ev.method, step=run.step, seconds=time.time() - start,
             experiment=task.experiment.name, source="test", data=run.data,
             params=run.params_kind, matmul_precision=execution.precision_in_force())
  check_finite(out, f"The {ev.method} bound of step {run.step}")
  parzen = parzen_samples and parzen_window(
      task, run.params, test, key, num_samples=parzen_samples, num_validation=parzen_validation,
      skip_first_step=run.config.sample.skip_first_step, should_stop=should_stop)
  written = [outputs.write_json(os.path.join(workdir, f"eval_{ev.method}{raw}_test.json"), out)]
  if ev.method == "all_t":
    written.append(outputs.save_npz(os.path.join(workdir, f"kl_per_t{raw}_test.npz"), t=result["t"],
                                    kl=result["kl_per_t"]))
    written.append(plotting.plot_kl_per_t(result["t"], result["kl_per_t"],
                                          os.path.join(workdir, f"kl_per_t{raw}_test.png")))
  if parzen:
    written.append(outputs.write_json(os.path.join(workdir, f"eval_parzen{raw}_test.json"), {
        **parzen, "step": run.step, "experiment": task.experiment.name, "source": "test",
        "params": run.params_kind}))
  return {**result, "method": ev.method, "step": run.step, "params": run.params_kind,
          "parzen": parzen or None, "written": written}


def describe(result: dict, units) -> str:
  """The lines a program prints for evaluate_run's result."""
  unit = result["unit"]
  text = (f"step {result['step']} ({result['params']} parameters), {result['num_images']} test "
          f"examples, method "
          f"{result['method']}" + (f", {result['num_strata']} strata" if "num_strata" in result
                                  else "") + ":\n"
          f"  -(K - L_null) = {result['neg_K_minus_L_null_bits_per_' + unit]:.4f} "
          f"+- {result['neg_K_minus_L_null_stderr']:.4f} bits/{unit} "
          f"(K - L_null = {result['K_minus_L_null_bits']:.4f}, the paper's Table 1 column; "
          f"K = {result['K_bits']:.4f}, L_null = {result['L_null_bits']:.4f})"
          + units.summary(result).replace("; ", "\n  ", 1))
  p = result.get("parzen")
  if p:
    text += (f"\n  Parzen window (sigma {p['sigma']:.3f} chosen on {p['num_validation']} "
             f"held-out training examples, {p['num_samples']} samples): {p['test_bits']:.1f} "
             f"+- {p['test_bits_stderr']:.1f} bits per example ({p['test_nats']:.1f} nats)")
  return text + "\nwrote " + ", ".join(result["written"])


def null_bits(task: experiment_lib.Task, params: Any) -> float:
  """L_null, the null model's log likelihood in bits per unit (-H_p(X_T))."""
  process = task.model.apply(params, jnp.float32, method="process")
  x = jnp.zeros((1,) + tuple(task.model.data_shape), jnp.float32)
  prior = jnp.broadcast_to(process.entropies(x).prior, x.shape)
  return -float(jnp.mean(prior)) * task.model.unit_dims / diffusion.LN2


def _summary(task, params, bits_per_example, extra):
  """The bound's report: -(K - L_null) per unit with its standard error, K and L_null."""
  mean, stderr = _mean_stderr(bits_per_example)
  l_null = null_bits(task, params)
  unit = task.experiment.unit
  out = {f"neg_K_minus_L_null_bits_per_{unit}": mean, "neg_K_minus_L_null_stderr": stderr,
         f"K_minus_L_null_bits_per_{unit}": -mean,
         "K_bits": l_null - mean, "K_bits_stderr": stderr, "L_null_bits": l_null,
         "K_minus_L_null_bits": -mean, "K_minus_L_null_bits_stderr": stderr, "unit": unit,
         "num_images": int(np.size(bits_per_example))}
  out.update(task.units.extras(mean, stderr))
  out.update(extra)  # may override num_images
  return out


# ----------------------------------------------------------------------------
# Parzen windows (the paper's MNIST table metric).


@jax.jit
def _parzen_chunk(x, samples, s_sq, sigma):
  """log p(x) of a chunk of points: one program for every window width and chunk."""
  n, d = samples.shape
  dist = jnp.sum(x**2, axis=1)[:, None] - 2.0 * x @ samples.T + s_sq[None, :]
  return (jax.nn.logsumexp(-dist / (2.0 * sigma**2), axis=1) - math.log(n)
          - 0.5 * d * jnp.log(2.0 * math.pi * sigma**2))


def parzen_log_likelihood(samples: np.ndarray, points: np.ndarray, sigma: float, *,
                          batch_size: int = 500) -> np.ndarray:
  """log p(x) per point under an isotropic Gaussian Parzen window on samples (nats).

  log p(x) = logsumexp_i(-|x - s_i|^2 / (2 sigma^2)) - log N - d/2 log(2 pi sigma^2).
  """
  samples = jnp.asarray(samples, jnp.float32).reshape(len(samples), -1)
  points = np.asarray(points, np.float32).reshape(len(points), -1)
  s_sq = jnp.sum(samples**2, axis=1)
  sigma = jnp.float32(sigma)
  return np.concatenate([
      np.asarray(_parzen_chunk(jnp.asarray(points[i:i + batch_size]), samples, s_sq, sigma))
      for i in range(0, len(points), batch_size)])


def parzen_window(task: experiment_lib.Task, params: Any, test: np.ndarray, key: jax.Array, *,
                  num_samples: int, num_validation: int, skip_first_step: bool = False,
                  should_stop=None) -> dict:
  """The Parzen-window log likelihood (the paper's MNIST metric) of num_samples samples on
  the test examples, the window chosen on the last num_validation training examples;
  everything in output units ([0, 1] pixels for images).

  Raises:
    errors.UserError: samples that are not finite (outputs.require_finite).
  """
  units = task.units
  sample = sampling.make_sampler(task.model, num_images=min(num_samples, 500),
                                 skip_first_step=skip_first_step)
  chunks = []
  while sum(len(c) for c in chunks) < num_samples:
    draws = sample(params, jax.random.fold_in(key, 1000 + len(chunks)), should_stop=should_stop)
    chunks.append(units.to_output(np.asarray(draws)))
  samples = np.concatenate(chunks)[:num_samples]
  outputs.require_finite("the Parzen window's samples", samples=samples)
  to_output = lambda x: units.to_output(np.asarray(units.to_model(x)))
  return parzen_select_and_score(samples, to_output(task.data.train[-num_validation:]),
                                 to_output(test))


def parzen_select_and_score(samples: np.ndarray, validation: np.ndarray, test: np.ndarray,
                            sigmas: Optional[np.ndarray] = None) -> dict:
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
          "num_validation": int(len(validation)),
          "test_nats": mean, "test_nats_stderr": stderr,
          "test_bits": mean / diffusion.LN2, "test_bits_stderr": stderr / diffusion.LN2,
          "num_samples": int(len(samples)), "num_test": int(len(test))}
