"""Training: the 2015 optimiser, a data-parallel jitted step, checkpoints and metrics.

Data flows one way: config -> data -> loss_fn -> train_step -> checkpoint and
metrics. Randomness is derived, never stored: the training batch at step s is
a function of (seed, s) and the step's key is fold_in(base_key, s), so a run
resumed from any checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Callable, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from dpm_jax import checkpoints
from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import evaluate as evaluate_lib
from dpm_jax import ops
from dpm_jax import parallel
from dpm_jax import plotting

# The reference code decays the learning rate by 10x per 1000 epochs, once an epoch.
LR_DECAY_PER_EPOCH = math.exp(math.log(0.1) / 1000.0)


class TrainingInterrupted(RuntimeError):
  """Training stopped on SIGTERM after saving a checkpoint; rerun to resume."""


class NonFiniteLossError(RuntimeError):
  """The loss stayed non-finite for too many consecutive steps."""


# ----------------------------------------------------------------------------
# Optimiser.


class NonFiniteState(NamedTuple):
  total: jax.Array  # tensors whose gradient was zeroed, summed over all steps
  last: jax.Array   # tensors zeroed at the latest step


def zero_nonfinite_per_tensor() -> optax.GradientTransformation:
  """Zeroes each gradient tensor that holds a NaN or Inf, and counts them.

  Blocks' RemoveNotFinite in the reference code: a non-finite step for one
  parameter tensor becomes a zero step for that tensor; the other tensors
  update as usual. Placed before RMSProp, as there.
  """

  def init_fn(params):
    del params
    return NonFiniteState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    bad = jax.tree.map(lambda g: jnp.logical_not(jnp.all(jnp.isfinite(g))), updates)
    updates = jax.tree.map(lambda g, b: jnp.where(b, jnp.zeros_like(g), g), updates, bad)
    n_bad = sum(b.astype(jnp.int32) for b in jax.tree.leaves(bad))
    return updates, NonFiniteState(state.total + n_bad, jnp.asarray(n_bad, jnp.int32))

  return optax.GradientTransformation(init_fn, update_fn)


def learning_rate_schedule(train_config, steps_per_epoch: int) -> optax.Schedule:
  """lr * 0.1^(epoch / 1000), applied once an epoch, floored at min_learning_rate."""
  return optax.exponential_decay(
      init_value=train_config.learning_rate, transition_steps=steps_per_epoch,
      decay_rate=LR_DECAY_PER_EPOCH, staircase=True,
      end_value=train_config.min_learning_rate)


def make_optimizer(train_config, steps_per_epoch: int) -> optax.GradientTransformation:
  """RemoveNotFinite then RMSProp (decay 0.9, 1e-10 floor, no bias correction).

  Blocks' RMSProp divides by max(sqrt(ms), 1e-10); optax by sqrt(ms) + 1e-10
  (eps_in_sqrt=False). They differ only when sqrt(ms) is below ~1e-9.
  """
  return optax.chain(
      zero_nonfinite_per_tensor(),
      optax.rmsprop(learning_rate_schedule(train_config, steps_per_epoch),
                    decay=train_config.rmsprop_decay, eps=train_config.rmsprop_eps,
                    eps_in_sqrt=False, bias_correction=False))


class TrainState(train_state.TrainState):
  """Flax TrainState plus device-side metric accumulators (checkpointed with it).

  Keeping the running sums in the state makes the logged averages identical
  after a resume from a checkpoint taken between two log steps.
  """
  loss_sum: jax.Array
  loss_count: jax.Array
  nonfinite_streak: jax.Array


def create_train_state(model, params, tx) -> TrainState:
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      loss_sum=jnp.zeros([], jnp.float32), loss_count=jnp.zeros([], jnp.int32),
      nonfinite_streak=jnp.zeros([], jnp.int32))


def nonfinite_total(state: TrainState) -> jax.Array:
  return state.opt_state[0].total


def nonfinite_last(state: TrainState) -> jax.Array:
  return state.opt_state[0].last


def make_train_step(loss_and_grad_fn: Callable, stats: data_lib.DataStats) -> Callable:
  """train_step(state, batch_uint8, base_key) -> (state, step_metrics).

  Args:
    loss_and_grad_fn: diffusion.make_loss_and_grad_fn(...).
    stats: the data's scale and shift (uint8 batches are scaled in the step).
  """

  def train_step(state: TrainState, batch, base_key):
    rng = jax.random.fold_in(base_key, state.step)
    images = data_lib.to_model_units(batch, stats)
    (loss, aux), grads = loss_and_grad_fn(state.params, images, rng)
    new_state = state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss)
    new_state = new_state.replace(
        loss_sum=state.loss_sum + jnp.where(finite, loss, 0.0),
        loss_count=state.loss_count + finite.astype(jnp.int32),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = {"loss": loss, "kl_nats": aux["kl_nats"], "t_mean": aux["t_mean"]}
    metrics.update(diffusion.get_norms(state.params["params"], grads["params"]))
    return new_state, metrics

  return train_step


CPU_MICRO_BATCH = 64


def resolve_micro_batch_size(requested: int, batch_size: int, num_devices: int,
                             conv_impl: str = "auto") -> int:
  """train.micro_batch_size: -1 picks 64 for the CPU convolutions, else 0.

  0 computes the gradient of each device's part of the batch at once; a
  positive value accumulates it over micro-batches of that size (the same
  draws, so the same gradient up to float rounding). Micro-batches keep the
  CPU formulation's buffers small; XLA's own convolution gains nothing from
  them.
  """
  if requested == -1:
    per_device = batch_size // num_devices
    fits = per_device > CPU_MICRO_BATCH and per_device % CPU_MICRO_BATCH == 0
    cpu_convs = ops.resolve_conv_impl(conv_impl) == "matmul"
    return CPU_MICRO_BATCH if cpu_convs and fits else 0
  if requested < 0 or (requested and batch_size % (requested * num_devices)):
    raise config_lib.ConfigError(
        f"train.micro_batch_size={requested} must be -1 (auto), 0 (off) or divide the "
        f"per-device batch {batch_size // num_devices}.")
  return requested


# ----------------------------------------------------------------------------
# Devices.


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one.

  Only for several hosts (a coordinator address, several SLURM tasks or TPU
  workers); it must run before JAX starts its backends.
  """
  env = os.environ
  multi_host = ("JAX_COORDINATOR_ADDRESS" in env
                or int(env.get("SLURM_NTASKS", "1") or 1) > 1
                or "," in env.get("TPU_WORKER_HOSTNAMES", ""))
  if not multi_host or jax.distributed.is_initialized():
    return
  try:
    jax.distributed.initialize()
  except (RuntimeError, ValueError) as err:
    logging.warning("Not joining a multi-host job: %s", err)


# ----------------------------------------------------------------------------
# Metrics.


class MetricWriter:
  """Appends metrics to workdir/metrics.jsonl and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.enabled = jax.process_index() == 0
    self._tb = None
    if not self.enabled:
      return
    self._truncate_after(resume_step)
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)
    except ImportError:
      logging.warning("tensorboardX is not installed; no TensorBoard event files.")

  def _truncate_after(self, step: int) -> None:
    """Drops records past the resumed step, so a resumed run logs each step once."""
    if not os.path.exists(self.path):
      return
    kept = []
    with open(self.path) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut short by a kill
        if record.get("step", 0) <= step:
          kept.append(json.dumps(record, sort_keys=True))
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(k + "\n" for k in kept))
    os.replace(tmp, self.path)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step)}
    record.update({k: _to_float(v) for k, v in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def _to_float(v):
  v = np.asarray(v)
  return float(v) if v.dtype.kind == "f" else int(v)


def read_metrics(workdir: str) -> list:
  """All records of workdir/metrics.jsonl."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------
# The loop.


def create_workdir(config) -> str:
  """runs/<model id><suffix>-<yymmddTHHMMSS>, as the seed's create_log_dir."""
  model_id = f"dpm_{config.data.dataset}"
  name = model_id + config.suffix + time.strftime("-%y%m%dT%H%M%S")
  return os.path.join(os.path.expanduser(config.output_dir), name)


def validate_config(config) -> None:
  """Checks the sections of a full experiment config; raises ConfigError."""
  for section in ("model", "data", "train", "eval"):
    if section not in config:
      raise config_lib.ConfigError(
          f"config has no '{section}' section; start from experiments/configs/default.py.")
  config_lib.validate_model_config(config.model)
  t = config.train
  for name in ("batch_size", "checkpoint_every_steps", "log_every_steps",
               "eval_every_steps", "max_nonfinite_steps", "keep_checkpoints"):
    if not isinstance(t[name], int) or t[name] < 1:
      raise config_lib.ConfigError(f"train.{name} must be a positive integer, got {t[name]!r}.")
  if t.num_steps < 0 or t.num_epochs < 0 or (t.num_steps == 0 and t.num_epochs == 0):
    raise config_lib.ConfigError(
        "Set train.num_steps > 0 (steps) or train.num_epochs > 0 (epochs); "
        f"got num_steps={t.num_steps}, num_epochs={t.num_epochs}.")
  if not t.learning_rate > 0:
    raise config_lib.ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate!r}.")
  if t.batches_per_epoch < 0:
    raise config_lib.ConfigError("train.batches_per_epoch must be >= 0 (0: one pass over the data).")
  if config.data.source not in data_lib.SOURCES:
    raise config_lib.ConfigError(
        f"data.source must be one of {data_lib.SOURCES}, got {config.data.source!r}.")
  ev = config.eval
  if ev.method not in ("stratified", "one_t"):
    raise config_lib.ConfigError(
        f"eval.method must be 'stratified' or 'one_t', got {ev.method!r}.")
  if ev.method == "one_t" and ev.num_batches < 2:
    raise config_lib.ConfigError("eval.num_batches must be >= 2 for a standard error.")
  T = config.model.trajectory_length
  if ev.method == "stratified" and not 1 <= ev.num_strata <= T - 1:
    raise config_lib.ConfigError(
        f"eval.num_strata must be in 1..{T - 1} (trajectory_length - 1), got {ev.num_strata}.")
  if ev.num_images < 0 or ev.batch_size < 1:
    raise config_lib.ConfigError(
        f"eval.num_images must be >= 0 (0: all) and eval.batch_size >= 1, got "
        f"{ev.num_images} and {ev.batch_size}.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: Optional[str] = None,
                       *, dataset: Optional[data_lib.Dataset] = None) -> TrainState:
  """Trains the model described by `config`, resuming from workdir's checkpoints.

  Args:
    config: an experiment config (experiments/configs/default.py).
    workdir: the run directory; a new one under config.output_dir if None.
    dataset: already loaded data (tests); loaded from config.data if None.

  Returns:
    The final TrainState.

  Raises:
    TrainingInterrupted: on SIGTERM, after a checkpoint was saved.
    NonFiniteLossError: after train.max_nonfinite_steps non-finite losses in a row.
  """
  validate_config(config)
  maybe_initialize_distributed()
  workdir = workdir or create_workdir(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  # Data.
  dataset = dataset or data_lib.load_dataset(config.data)
  if dataset.image_shape != (config.model.spatial_width, config.model.spatial_width,
                             config.model.n_colors):
    raise config_lib.ConfigError(
        f"The data's images are {dataset.image_shape} but the model expects "
        f"({config.model.spatial_width}, {config.model.spatial_width}, "
        f"{config.model.n_colors}); set model.spatial_width / model.n_colors, "
        "or pick the matching config (experiments/configs/mnist.py or cifar10.py).")
  batch_size = config.train.batch_size
  n_train = len(dataset.train)
  data_steps_per_epoch = data_lib.steps_per_epoch(n_train, batch_size)
  steps_per_epoch = config.train.batches_per_epoch or data_steps_per_epoch
  num_steps = config.train.num_steps or config.train.num_epochs * steps_per_epoch
  par = parallel.DataParallel()
  par.check_batch_size(batch_size)

  # Model and optimiser.
  model = diffusion.make_model(config.model)
  tx = make_optimizer(config.train, steps_per_epoch)
  init_key, train_key, eval_key, sample_key = jax.random.split(jax.random.key(config.seed), 4)
  state = create_train_state(model, diffusion.init_params(model, init_key), tx)

  # Resume or start.
  manager = checkpoints.make_manager(workdir, config.train.keep_checkpoints)
  start = checkpoints.latest_step(manager)
  config_dict = json.loads(checkpoints.config_to_json(config))
  if start is not None:
    try:
      saved_state, meta = checkpoints.restore(manager, start, jax.tree.map(np.asarray, state))
      diffs = checkpoints.diff_sections(meta["config"], config_dict)
      if diffs:
        raise checkpoints.CheckpointError(
            f"The checkpoint in {checkpoints.checkpoint_dir(workdir)} was made with a "
            "different model or data config:\n  " + "\n  ".join(diffs) +
            "\nUse the original config, or a new --workdir for the new one.")
    except BaseException:
      manager.close()
      raise
    state = saved_state
    stats = data_lib.DataStats.from_dict(meta["data_stats"])
    logging.info("Resumed from step %d in %s", start, workdir)
  else:
    start = 0
    stats = data_lib.compute_stats(
        dataset.train, scale_from=config.data.scale_from,
        dequantization=config.data.dequantization, batch_size=batch_size, seed=config.seed)
  if is_main:
    checkpoints.write_json(os.path.join(workdir, "config.json"), checkpoints.config_to_json(config))
    checkpoints.write_json(os.path.join(workdir, "data_stats.json"), stats.to_json())
  meta = {"config": config_dict, "data_stats": json.loads(stats.to_json()),
          "dataset": dataset.name}

  state = par.put_replicated(state)
  micro_batch = resolve_micro_batch_size(config.train.micro_batch_size, batch_size,
                                         par.num_devices, config.model.conv_impl)
  loss_and_grad = diffusion.make_loss_and_grad_fn(
      model, uniform_noise=stats.uniform_noise, train=True, micro_batch_size=micro_batch,
      mesh=par.mesh)
  train_step = jax.jit(make_train_step(loss_and_grad, stats), donate_argnums=(0,),
                       in_shardings=(par.replicated, par.batch_sharding, par.replicated),
                       out_shardings=(par.replicated, par.replicated))
  lr_schedule = learning_rate_schedule(config.train, steps_per_epoch)
  evaluator = evaluate_lib.make_test_evaluator(
      model, stats, dataset.test, config.eval, par, key=eval_key)
  writer = MetricWriter(workdir, start)
  sampler_fn = _make_periodic_sampler(model, stats, config, workdir, sample_key)

  logging.info(
      "Training %s on %s: %d train / %d test images, batch %d on %d device(s) "
      "(%d process(es)), gradients over micro-batches of %s, %d steps per epoch, "
      "steps %d..%d, %d parameters, workdir %s",
      model.__class__.__name__, dataset.name, n_train, len(dataset.test), batch_size,
      par.num_devices, jax.process_count(), micro_batch or batch_size, steps_per_epoch,
      start, num_steps,
      diffusion.count_params(state.params), workdir)

  stop = _SigtermFlag()
  step = start
  t_window, n_window = time.time(), 0
  t_start = time.time()
  compile_logged = False
  try:
    with stop:
      while step < num_steps:
        idx = data_lib.batch_indices(step, n_train, batch_size, config.seed)
        batch = par.put_batch(dataset.train[idx])
        state, step_metrics = train_step(state, batch, train_key)
        step += 1
        n_window += 1
        streak = int(state.nonfinite_streak)
        if streak >= config.train.max_nonfinite_steps:
          raise NonFiniteLossError(
              f"The training loss was non-finite for {streak} consecutive steps "
              f"(up to step {step}). Parameters past the last checkpoint "
              f"(step {checkpoints.latest_step(manager)}, kept in "
              f"{checkpoints.checkpoint_dir(workdir)}) are discarded. Lower "
              "train.learning_rate, check the data for NaN/Inf, or raise "
              "train.max_nonfinite_steps.")
        if not compile_logged:
          logging.info("First step compiled and ran in %.1f s", time.time() - t_start)
          compile_logged = True
          t_window, n_window = time.time(), 0

        record = {}
        if step % config.train.log_every_steps == 0 or step == num_steps:
          state, record = _train_record(state, step_metrics, lr_schedule, step)
          dt = time.time() - t_window
          if n_window and dt > 0:
            record["perf/images_per_sec"] = n_window * batch_size / dt
            record["perf/steps_per_sec"] = n_window / dt
          t_window, n_window = time.time(), 0
          _log_progress(step, num_steps, steps_per_epoch, record, t_start, start)
        if step % config.train.eval_every_steps == 0 or step == num_steps:
          record.update(evaluator(state.params))
          logging.info("step %d: eval bound %.4f +- %.4f bits/pixel (-(K-L_null)); "
                       "NLL bound %.4f bits/dim on 8-bit data", step,
                       record["eval/loss"], record["eval/loss_stderr"], record["eval/nll_bpd"])
        if record:
          writer.write(step, record)
        if config.train.sample_every_steps and (
            step % config.train.sample_every_steps == 0 or step == num_steps) and is_main:
          sampler_fn(state.params, step)
        if step % config.train.checkpoint_every_steps == 0 or step == num_steps:
          checkpoints.save(manager, step, state, dict(meta, step=step))
        if record.get("eval/loss") is not None and is_main:
          plotting.plot_learning_curves(read_metrics(workdir),
                                        os.path.join(workdir, "learning_curves.png"))
        if stop.requested:
          if step not in manager.all_steps():
            checkpoints.save(manager, step, state, dict(meta, step=step))
          manager.wait_until_finished()
          raise TrainingInterrupted(
              f"SIGTERM received: saved a checkpoint at step {step} in "
              f"{checkpoints.checkpoint_dir(workdir)}; rerun the same command to resume.")
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
  if is_main:
    plotting.plot_learning_curves(read_metrics(workdir), os.path.join(workdir, "learning_curves.png"))
  return state


def _train_record(state, step_metrics, lr_schedule, step):
  """Reads and resets the loss accumulators; the record of a log step."""
  count = int(state.loss_count)
  record = {
      "train/loss": float(state.loss_sum) / count if count else float("nan"),
      "train/finite_steps": count,
      "train/learning_rate": float(lr_schedule(step - 1)),
      "train/nonfinite_tensors": int(nonfinite_last(state)),
      "train/nonfinite_tensors_total": int(nonfinite_total(state)),
      "train/kl_nats": float(step_metrics["kl_nats"]),
      "train/t_mean": float(step_metrics["t_mean"]),
  }
  for k, v in step_metrics.items():
    if k.startswith(("norm/", "grad_norm/")):
      record["train/" + k] = float(v)
  state = state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                        loss_count=jnp.zeros_like(state.loss_count))
  return state, record


def _log_progress(step, num_steps, steps_per_epoch, record, t_start, start):
  elapsed = time.time() - t_start
  done = step - start
  eta = elapsed / done * (num_steps - step) if done else float("nan")
  logging.info(
      "step %d/%d (%.1f%%, epoch %.2f): train bound %.4f bits/pixel, lr %.3g, "
      "%.0f images/s, elapsed %s, ETA %s", step, num_steps, 100.0 * step / num_steps,
      step / steps_per_epoch, record["train/loss"], record["train/learning_rate"],
      record.get("perf/images_per_sec", float("nan")), _hms(elapsed), _hms(eta))


def _hms(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _make_periodic_sampler(model, stats, config, workdir, key):
  """Writes workdir/samples/step_<step>.png during training."""
  if not config.train.sample_every_steps:
    return lambda params, step: None
  from dpm_jax import sampling  # pylint: disable=g-import-not-at-top
  # Over the most local devices that divide the grid's images.
  sample = sampling.make_sampler(model, num_images=config.train.sample_num_images)

  def write(params, step):
    images = sample(params, key)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
    plotting.save_image_grid(data_lib.to_pixels(images, stats), path)
    logging.info("step %d: %d samples -> %s", step, len(images), path)
  return write


class _SigtermFlag:
  """Turns SIGTERM into a flag checked between steps (main thread only)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: finishing this step, then saving a checkpoint.")
    self.requested = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False
