"""Training: the 2015 optimiser, one jitted train step, and the loop.

Data flows one way: config -> task (model, data) -> loss_fn -> train_step ->
checkpoint and metrics. Randomness is derived, never stored: the training
batch at step s is a function of (seed, s) and the step's key is
fold_in(base_key, s), so a run resumed from any checkpoint repeats the
uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import evaluate as evaluate_lib
from dpm_jax import kernels
from dpm_jax import metrics as metrics_lib
from dpm_jax import parallel
from dpm_jax import plotting
from dpm_jax import rundir
from dpm_jax import sampling
from dpm_jax import tasks as tasks_lib

# The reference code decays the learning rate by 10x per 1000 epochs, once an epoch.
LR_DECAY_PER_EPOCH = math.exp(math.log(0.1) / 1000.0)


class TrainingInterrupted(RuntimeError):
  """Training stopped on SIGTERM after saving a checkpoint; rerun to resume."""


class NonFiniteLossError(RuntimeError):
  """The loss stayed non-finite for too many consecutive steps, or at the last one."""


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


def learning_rate_schedule(optimizer_config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """lr * 0.1^(epoch / 1000), applied once an epoch, floored at min_learning_rate."""
  return optax.exponential_decay(
      init_value=optimizer_config.learning_rate, transition_steps=steps_per_epoch,
      decay_rate=LR_DECAY_PER_EPOCH, staircase=True,
      end_value=optimizer_config.min_learning_rate)


OPTIMIZERS = ("rmsprop", "adam")


def make_optimizer(optimizer_config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """RemoveNotFinite, then RMSProp (the reference code's) or Adam.

  RMSProp: decay 0.9, 1e-10 floor, no bias correction. Blocks' RMSProp
  divides by max(sqrt(ms), 1e-10); optax by sqrt(ms) + 1e-10
  (eps_in_sqrt=False). They differ only when sqrt(ms) is below ~1e-9.
  Adam (optax defaults): for the Table 1 experiments, which the paper trained
  with SFO, a quasi-Newton method optax does not have.
  """
  schedule = learning_rate_schedule(optimizer_config, steps_per_epoch)
  if optimizer_config.get("name", "rmsprop") == "adam":
    update = optax.adam(schedule)
  else:
    update = optax.rmsprop(schedule, decay=optimizer_config.rmsprop_decay,
                           eps=optimizer_config.rmsprop_eps, eps_in_sqrt=False,
                           bias_correction=False)
  return optax.chain(zero_nonfinite_per_tensor(), update)


class TrainState(train_state.TrainState):
  """Flax TrainState plus device-side metric accumulators (checkpointed with it).

  Keeping the running sums in the state makes the logged averages identical
  after a resume from a checkpoint taken between two log steps.
  """
  loss_sum: jax.Array
  loss_count: jax.Array
  nonfinite_streak: jax.Array


def create_train_state(model: nn.Module, params: Any,
                       tx: optax.GradientTransformation) -> TrainState:
  return TrainState.create(
      apply_fn=model.apply, params=params, tx=tx,
      loss_sum=jnp.zeros([], jnp.float32), loss_count=jnp.zeros([], jnp.int32),
      nonfinite_streak=jnp.zeros([], jnp.int32))


def nonfinite_total(state: TrainState) -> jax.Array:
  return state.opt_state[0].total


def nonfinite_last(state: TrainState) -> jax.Array:
  return state.opt_state[0].last


# ----------------------------------------------------------------------------
# The train step.


def make_train_step(loss_and_grad_fn: Callable, prepare: Callable) -> Callable:
  """train_step(state, batch, base_key) -> (state, step_metrics).

  Args:
    loss_and_grad_fn: parallel.make_loss_and_grad(loss_fn, ...).
    prepare: a batch of stored examples -> x_0 in model units (Task.prepare).
  """

  def train_step(state: TrainState, batch, base_key):
    rng = jax.random.fold_in(base_key, state.step)
    (loss, aux), grads = loss_and_grad_fn(state.params, prepare(batch), rng)
    new_state = state.apply_gradients(grads=grads)
    finite = jnp.isfinite(loss)
    new_state = new_state.replace(
        loss_sum=state.loss_sum + jnp.where(finite, loss, 0.0),
        loss_count=state.loss_count + finite.astype(jnp.int32),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1))
    metrics = dict(aux)
    metrics.update(diffusion.get_norms(state.params["params"], grads["params"]))
    return new_state, metrics

  return train_step


CPU_MICRO_BATCH = 64


def resolve_micro_batch_size(requested: int, batch_size: int, num_devices: int,
                             conv: str = "auto") -> int:
  """compute.micro_batch_size: -1 picks 64 for the CPU convolution kernel, else 0.

  0 computes the gradient of each device's part of the batch at once; a
  positive value accumulates it over micro-batches of that size (the same
  draws, so the same gradient up to float rounding). Micro-batches keep the
  CPU kernel's buffers small; XLA's own convolution gains nothing from them.
  """
  if requested == -1:
    per_device = batch_size // num_devices
    fits = per_device > CPU_MICRO_BATCH and per_device % CPU_MICRO_BATCH == 0
    return CPU_MICRO_BATCH if kernels.resolve(conv) == "cpu" and fits else 0
  if requested < 0 or (requested and batch_size % (requested * num_devices)):
    raise config_lib.ConfigError(
        f"compute.micro_batch_size={requested} must be -1 (auto), 0 (off) or divide the "
        f"per-device batch {batch_size // num_devices}.")
  return requested


def jit_train_step(task: tasks_lib.Task, config: ml_collections.ConfigDict,
                   par: parallel.DataParallel) -> Callable:
  """The jitted, data-parallel train step of a task: what the loop and the benchmark run."""
  micro_batch = resolve_micro_batch_size(config.compute.micro_batch_size,
                                         config.train.batch_size, par.num_devices,
                                         config.compute.conv)
  loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.uniform_noise, train=True)
  loss_and_grad = parallel.make_loss_and_grad(loss_fn, micro_batch_size=micro_batch,
                                              mesh=par.mesh)
  return jax.jit(make_train_step(loss_and_grad, task.prepare), donate_argnums=(0,),
                 in_shardings=(par.replicated, par.batch_sharding, par.replicated),
                 out_shardings=(par.replicated, par.replicated))


# ----------------------------------------------------------------------------
# Periodic actions.


class Periodic:
  """Runs `fn(step, state, metrics, record) -> state` every `every` steps and at the last.

  every = 0 turns it off; `record` collects the step's metrics to write. An
  abandonable action (an evaluation, a sample grid) is dropped on SIGTERM.
  """

  def __init__(self, every: int, last_step: int, fn: Callable, abandonable: bool = False):
    self.every, self.last_step, self.fn = every, last_step, fn
    self.abandonable = abandonable

  def __call__(self, step, state, metrics, record):
    if self.every and (step % self.every == 0 or step == self.last_step):
      return self.fn(step, state, metrics, record) or state
    return state


def log_train(schedule, throughput, steps_per_epoch, num_steps, start, unit):
  """Reads and resets the loss accumulators and logs the progress line."""
  t_start = time.time()

  def fn(step, state, metrics, record):
    count = int(state.loss_count)
    record.update({
        "train/loss": float(state.loss_sum) / count if count else float("nan"),
        "train/finite_steps": count,
        "train/learning_rate": float(schedule(step - 1)),
        "train/nonfinite_tensors": int(nonfinite_last(state)),
        "train/nonfinite_tensors_total": int(nonfinite_total(state)),
        **{"train/" + k: float(v) for k, v in metrics.items() if k != "loss"},
        **throughput.lap()})
    metrics_lib.log_progress(step, num_steps, steps_per_epoch, record,
                             time.time() - t_start, step - start, unit)
    return state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                         loss_count=jnp.zeros_like(state.loss_count))
  return fn


def evaluate_test(evaluator, unit):
  def fn(step, state, metrics, record):
    record.update(evaluator(state.params))
    logging.info("step %d: eval bound %.4f +- %.4f bits/%s (-(K-L_null))%s", step,
                 record["eval/loss"], record["eval/loss_stderr"], unit,
                 "; NLL bound %.4f bits/dim on 8-bit data" % record["eval/nll_bpd"]
                 if "eval/nll_bpd" in record else "")
  return fn


def write_samples(task, num, workdir, key):
  """Draws `num` samples and writes them to workdir/samples/step_<step>.png."""
  sample = sampling.make_sampler(task.model, num_images=num)

  def fn(step, state, metrics, record):
    if jax.process_index() == 0:
      path = tasks_lib.samples_path(workdir, step)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      task.save_samples(np.asarray(sample(state.params, key)), path)
      logging.info("step %d: %d samples -> %s", step, num, path)
  return fn


@jax.jit
def all_finite(state: Any) -> jax.Array:
  """Whether every floating-point array of the state is finite."""
  leaves = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


PROBE_EXAMPLES = 64


class Saver:
  """Saves finite states only: the checkpoint action, and the check behind it.

  A state is saved if the loss of the step that made it was finite, all its
  arrays are finite, and so is the loss at its own parameters on a fixed
  batch of training examples (a step that diverged leaves finite but huge
  parameters whose next loss is NaN). Pruning old checkpoints therefore
  never removes the last good one. The disk's free space is checked first.
  """

  def __init__(self, manager, workdir: str, meta: dict, task: tasks_lib.Task):
    self.manager, self.workdir, self.meta = manager, workdir, meta
    loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.uniform_noise, train=True)
    probe = task.train[:PROBE_EXAMPLES]
    self._probe_loss = jax.jit(
        lambda params: loss_fn(params, task.prepare(probe), jax.random.key(0))[0])

  def healthy(self, state) -> bool:
    return (not int(state.nonfinite_streak) and bool(all_finite(state))
            and bool(jnp.isfinite(self._probe_loss(state.params))))

  def save(self, step: int, state) -> bool:
    """Saves the state at `step` (asynchronously) if it is healthy; whether it did."""
    if not self.healthy(state):
      logging.warning("step %d: no checkpoint saved: the loss or the state is not finite.", step)
      return False
    rundir.check_space(self.manager, self.workdir, rundir.state_nbytes(state))
    rundir.save(self.manager, step, state, self.meta)
    return True

  def __call__(self, step, state, metrics, record):
    self.save(step, state)

  def last_good(self) -> str:
    """Where to go on from: the newest checkpoint, and how to resume from it."""
    if not self.manager.all_steps():
      return rundir.last_good(self.manager) + " Start again with other settings."
    return (rundir.last_good(self.manager) +
            " Rerun with the same --workdir and other settings to resume from it.")


def plot_curves(workdir):
  def fn(step, state, metrics, record):
    if jax.process_index() == 0:
      plotting.plot_learning_curves(metrics_lib.read_metrics(workdir),
                                    os.path.join(workdir, "learning_curves.png"))
  return fn


# ----------------------------------------------------------------------------
# The loop.


class RunKeys(NamedTuple):
  """The run's random streams, all derived from config.seed."""
  init: jax.Array
  train: jax.Array
  eval: jax.Array
  sample: jax.Array


def run_keys(seed: int) -> RunKeys:
  return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def restore_or_create(config, workdir, manager, tx, dataset, resume_verified=False):
  """(task, state, start step): from the newest checkpoint, or new at step 0.

  resume_verified: resume from the newest checkpoint that restores and
  verifies, moving newer, corrupt ones to <workdir>/checkpoints_corrupt/.
  """

  def restore_step(step):
    meta = rundir.read_meta(manager, step)
    diffs = rundir.diff_sections(meta["config"], rundir.config_to_dict(config))
    if diffs:
      raise rundir.CheckpointError(
          f"The checkpoint in {rundir.checkpoint_dir(workdir)} was made with a different model "
          "or data config:\n  " + "\n  ".join(diffs) +
          "\nUse the original config, or a new --workdir for the new one.")
    task = tasks_lib.build(config, dataset, meta["data_stats"])
    target = jax.eval_shape(lambda: create_train_state(
        task.model, diffusion.init_params(task.model, jax.random.key(0)), tx))
    return task, rundir.restore(manager, step, target)[0]

  if resume_verified:
    start, restored = rundir.restore_newest_verified(manager, restore_step)
  else:
    start = rundir.latest_step(manager)
    restored = None if start is None else restore_step(start)
  if start is None:
    task = tasks_lib.build(config, dataset)
    params = diffusion.init_params(task.model, run_keys(config.seed).init)
    return task, create_train_state(task.model, params, tx), 0
  logging.info("Resumed from step %d in %s", start, workdir)
  return (*restored, start)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: Optional[str] = None,
                       *, dataset: Optional[data_lib.Dataset] = None,
                       devices: Optional[Sequence[jax.Device]] = None,
                       resume_verified: bool = False) -> TrainState:
  """Trains the model of `config`, resuming from workdir's checkpoints.

  Args:
    config: an experiment config (experiments/configs/default.py).
    workdir: the run directory; a new one under config.output_dir if None.
    dataset: already loaded data (tests); loaded from config.data if None.
    devices: the devices the batch is split over; all (of every process) if None.
    resume_verified: if the newest checkpoint is corrupt, resume from the
      newest that verifies (the corrupt ones are moved aside), not fail.

  Returns:
    The final TrainState.

  Raises:
    TrainingInterrupted: on SIGTERM, after a checkpoint was saved.
    NonFiniteLossError: after train.max_nonfinite_steps non-finite losses in a
      row, or one at the last step.
    rundir.RunDirError: the workdir cannot be written, is full or is in use.
    rundir.CheckpointError: a checkpoint is corrupt or does not fit the config.
  """
  validate_config(config)
  maybe_initialize_distributed()
  workdir = workdir or create_workdir(config)
  free = rundir.prepare_workdir(workdir)  # before loading data and compiling
  lock = rundir.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    manager = rundir.make_manager(workdir, config.train.keep_checkpoints)
    try:
      return _train(config, workdir, manager, dataset, devices, resume_verified, free)
    finally:
      close_quietly(manager)


def _train(config, workdir, manager, dataset, devices, resume_verified, free) -> TrainState:
  """The loop of train_and_evaluate, in a locked workdir with its checkpoint manager."""
  par = parallel.DataParallel(devices)
  par.check_batch_size(config.train.batch_size)
  dataset = dataset or tasks_lib.load_data(config)
  n_train = len(dataset.train)
  steps_per_epoch, num_steps = schedule_steps(config, n_train)
  tx = make_optimizer(config.optimizer, steps_per_epoch)
  task, state, start = restore_or_create(config, workdir, manager, tx, dataset, resume_verified)
  if start >= num_steps:
    logging.info("This run is complete: step %d of %d, in %s (metrics.jsonl, samples/, "
                 "checkpoints/). Raise --config.train.num_steps to train on.",
                 start, num_steps, os.path.abspath(workdir))
    return state
  state = par.put_replicated(state)
  meta = write_run_files(config, workdir, task)
  train_step = jit_train_step(task, config, par)
  keys = run_keys(config.seed)
  saver = Saver(manager, workdir, meta, task)
  t, throughput = config.train, metrics_lib.Throughput(config.train.batch_size)
  actions = [
      Periodic(t.log_every_steps, num_steps, log_train(
          learning_rate_schedule(config.optimizer, steps_per_epoch), throughput,
          steps_per_epoch, num_steps, start, task.unit)),
      Periodic(t.eval_every_steps, num_steps, evaluate_test(evaluate_lib.make_test_evaluator(
          task, config.eval, par, key=keys.eval), task.unit), abandonable=True),
      Periodic(t.sample_every_steps, num_steps,
               write_samples(task, t.sample_num_images, workdir, keys.sample), abandonable=True),
      Periodic(t.checkpoint_every_steps, num_steps, saver),
      Periodic(t.eval_every_steps, num_steps, plot_curves(workdir), abandonable=True),
  ]
  log_start(task, config, par, start, num_steps, state, workdir, free)
  with metrics_lib.MetricWriter(workdir, start) as writer, SigtermFlag() as stop:
    for step in range(start + 1, num_steps + 1):
      batch = par.put_batch(task.train[data_lib.batch_indices(step - 1, n_train, t.batch_size,
                                                              config.seed)])
      # The first step compiles (seconds to minutes): SIGTERM may abandon it.
      state, step_metrics = stop.call(train_step, state, batch, keys.train,
                                      abandonable=step == start + 1)
      throughput.tick()
      if step == start + 1:
        log_first_step(step, num_steps, step_metrics, t.log_every_steps, task.unit)
      check_finite(state, step, num_steps, t.max_nonfinite_steps, saver)
      rundir.check_save_errors(manager, workdir)
      record = {}
      with contextlib.suppress(Abandoned):
        for action in actions:
          state = stop.call(action, step, state, step_metrics, record,
                            abandonable=action.abandonable)
      if record:
        writer.write(step, record)
      if stop.requested:
        raise interrupt(saver, step, state)
  rundir.check_save_errors(manager, workdir, wait=True)  # the last save, cause first
  return state


def log_first_step(step, num_steps, metrics, log_every, unit) -> None:
  """A progress line as soon as the first step (and its compilation) is done."""
  logging.info("step %d/%d: train bound %.4f bits/%s (this step); compiled and ran; "
               "progress with speed and ETA every %d steps", step, num_steps,
               float(metrics["loss"]), unit, log_every)


def close_quietly(manager) -> None:
  """Waits for pending saves and closes the manager; a save error here was either
  reported already (check_save_errors) or is secondary to the error being raised."""
  try:
    manager.wait_until_finished()
    manager.close()
  except Exception as err:  # pylint: disable=broad-except
    logging.debug("Closing the checkpoint manager: %s", err)


def schedule_steps(config: ml_collections.ConfigDict, n_train: int) -> tuple[int, int]:
  """(steps per epoch, total steps) of config.train."""
  steps_per_epoch = (config.train.batches_per_epoch
                     or data_lib.steps_per_epoch(n_train, config.train.batch_size))
  return steps_per_epoch, config.train.num_steps or config.train.num_epochs * steps_per_epoch


def write_run_files(config, workdir, task) -> dict:
  """config.json and data_stats.json; returns the metadata saved with checkpoints."""
  if jax.process_index() == 0:
    rundir.write_json(os.path.join(workdir, "config.json"), rundir.config_to_json(config))
    rundir.write_json(os.path.join(workdir, "data_stats.json"), task.stats)
  return {"config": rundir.config_to_dict(config), "data_stats": task.stats, "dataset": task.name}


def log_start(task, config, par, start, num_steps, state, workdir, free):
  logging.info(
      "Training %s on %s: %d train / %d test examples, batch %d on %d device(s) "
      "(%d process(es)), steps %d..%d, %d parameters, workdir %s (%.0f MiB free, "
      "%.1f MiB a checkpoint)",
      task.model.__class__.__name__, task.name, len(task.train), len(task.test),
      config.train.batch_size, par.num_devices, jax.process_count(), start, num_steps,
      diffusion.count_params(state.params), workdir, free / 2**20,
      rundir.state_nbytes(state) / 2**20)


def check_finite(state, step, num_steps, max_steps, saver):
  """Raises NonFiniteLossError after max_steps non-finite losses in a row, or if
  the final state is not healthy; no checkpoint is saved while it is not."""
  streak = int(state.nonfinite_streak)
  last = step == num_steps
  if streak >= max_steps or (last and not saver.healthy(state)):
    raise NonFiniteLossError(
        f"The training loss was non-finite for {streak} consecutive step(s), up to step "
        f"{step}{' (the last, whose state is not finite)' if last else ''}; no checkpoint is "
        f"saved while it is. {saver.last_good()} Lower --config.optimizer.learning_rate, "
        "check the data for NaN/Inf, or raise train.max_nonfinite_steps.")


def interrupt(saver, step, state) -> TrainingInterrupted:
  """Saves the state at `step` (unless just saved, or not finite) and returns the error."""
  manager = saver.manager
  if step not in manager.all_steps() and not saver.save(step, state):
    return TrainingInterrupted(f"SIGTERM received at step {step}, whose state is not finite: "
                               f"not saved. {saver.last_good()}")
  rundir.check_save_errors(manager, saver.workdir, wait=True)
  return TrainingInterrupted(
      f"SIGTERM received: saved a checkpoint at step {step} in "
      f"{rundir.checkpoint_dir(saver.workdir)}; rerun the same command to resume.")


# ----------------------------------------------------------------------------
# Config, devices, signals.


def create_workdir(config: ml_collections.ConfigDict) -> str:
  """runs/<model id><suffix>-<yymmddTHHMMSS>, as the seed's create_log_dir."""
  model_id = f"dpm_{config.data.dataset}"
  name = model_id + config.suffix + time.strftime("-%y%m%dT%H%M%S")
  return os.path.join(os.path.expanduser(config.output_dir), name)


def _non_finite_fields(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _non_finite_fields(value, f"{prefix}{key}.")
    elif isinstance(value, float) and not math.isfinite(value):
      yield f"{prefix}{key}={value}"


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks the sections of a full experiment config; raises ConfigError."""
  bad = list(_non_finite_fields(config))
  if bad:
    raise config_lib.ConfigError(f"config fields must be finite numbers: {', '.join(bad)}.")
  for section in ("model", "data", "train", "optimizer", "compute", "eval"):
    if section not in config:
      raise config_lib.ConfigError(
          f"config has no '{section}' section; start from experiments/configs/default.py.")
  tasks_lib.validate_model_config(config)
  t = config.train
  for name in ("batch_size", "checkpoint_every_steps", "log_every_steps",
               "eval_every_steps", "max_nonfinite_steps", "keep_checkpoints"):
    if not isinstance(t[name], int) or t[name] < 1:
      raise config_lib.ConfigError(f"train.{name} must be a positive integer, got {t[name]!r}.")
  if t.num_steps < 0 or t.num_epochs < 0 or (t.num_steps == 0 and t.num_epochs == 0):
    raise config_lib.ConfigError(
        "Set train.num_steps > 0 (steps) or train.num_epochs > 0 (epochs); "
        f"got num_steps={t.num_steps}, num_epochs={t.num_epochs}.")
  if t.batches_per_epoch < 0:
    raise config_lib.ConfigError("train.batches_per_epoch must be >= 0 (0: one pass over the data).")
  o = config.optimizer
  if o.get("name", "rmsprop") not in OPTIMIZERS:
    raise config_lib.ConfigError(f"optimizer.name must be one of {OPTIMIZERS}, got {o.name!r}.")
  for name in ("learning_rate", "min_learning_rate"):
    if not 0 < o[name] < math.inf:
      raise config_lib.ConfigError(
          f"optimizer.{name} must be a finite number > 0, got {o[name]!r}.")
  if not 0 <= o.rmsprop_decay < 1 or not 0 <= o.rmsprop_eps < math.inf:
    raise config_lib.ConfigError(
        "optimizer.rmsprop_decay must be in [0, 1) and optimizer.rmsprop_eps finite and >= 0, "
        f"got {o.rmsprop_decay!r} and {o.rmsprop_eps!r}.")
  if config.compute.conv not in kernels.CONV_KERNELS:
    raise config_lib.ConfigError(
        f"compute.conv must be one of {kernels.CONV_KERNELS}, got {config.compute.conv!r}.")
  sources = ("synthetic",) if config.data.dataset in tasks_lib.SYNTHETIC else data_lib.SOURCES
  if config.data.source not in sources:
    raise config_lib.ConfigError(
        f"data.source must be one of {sources} for data.dataset={config.data.dataset!r}, "
        f"got {config.data.source!r}.")
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


class Abandoned(Exception):
  """SIGTERM arrived while an abandonable action ran; its result is dropped."""


class SigtermFlag:
  """Turns SIGTERM into a flag checked between steps (main thread only).

  `call(fn, ..., abandonable=True)` runs fn in a worker thread while the main
  thread waits for it or for SIGTERM, whichever comes first: an evaluation,
  a sample grid or a compilation is abandoned at once (Abandoned), not
  finished, so the run saves and exits within seconds in any phase.
  """

  def __init__(self):
    self.requested = False
    self._active = False
    self._previous = None

  def _handler(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint, then exiting.")
    self.requested = True

  def call(self, fn, *args, abandonable: bool = False):
    if not (abandonable and self._active):
      return fn(*args)
    if self.requested:
      raise Abandoned()
    box = {}

    def work():
      try:
        box["value"] = fn(*args)
      except BaseException as err:  # pylint: disable=broad-except
        box["error"] = err

    worker = threading.Thread(target=work, name="dpm-jax-abandonable", daemon=True)
    worker.start()
    while worker.is_alive():
      worker.join(0.05)
      if self.requested:
        raise Abandoned()
    if "error" in box:
      raise box["error"]
    return box["value"]

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handler)
      self._active = True
    return self

  def __exit__(self, *exc):
    if self._active:
      signal.signal(signal.SIGTERM, self._previous)
      self._active = False
    return False
