"""The training loop: `train_and_evaluate(experiment, config, workdir)`.

Randomness is derived, never stored: the batch of step s is a function of
(seed, s) and the step's key is fold_in(base_key, s), so a run resumed from
any checkpoint repeats the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import NamedTuple, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dpm_jax import config as config_lib
from dpm_jax import data as data_lib
from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import evaluate as evaluate_lib
from dpm_jax import execution
from dpm_jax import experiment as experiment_lib
from dpm_jax import metrics as metrics_lib
from dpm_jax import optim
from dpm_jax import outputs
from dpm_jax import plotting
from dpm_jax import rundir
from dpm_jax import safety
from dpm_jax import sampling
from dpm_jax import step as step_lib

# The periodic actions a stop signal interrupted, redone on resume.
PENDING_FILE = "pending_actions.json"


class RunKeys(NamedTuple):
  """The run's random streams, all derived from config.seed."""
  init: jax.Array
  train: jax.Array
  eval: jax.Array
  sample: jax.Array


def run_keys(seed: int) -> RunKeys:
  return RunKeys(*jax.random.split(jax.random.key(seed), 4))


def is_time(step: int, every: int, last_step: int) -> bool:
  """Whether a periodic action runs at `step`: every `every` steps and at the last (0: never)."""
  return bool(every) and (step % every == 0 or step == last_step)


def train_and_evaluate(experiment: experiment_lib.Experiment, config: ml_collections.ConfigDict,
                       workdir: Optional[str] = None,
                       *, dataset: Optional[data_lib.Dataset] = None,
                       devices: Optional[Sequence[jax.Device]] = None,
                       resume_verified: bool = False) -> step_lib.TrainState:
  """Trains the model of `config`, resuming from workdir's checkpoints; returns the final
  TrainState.

  Args:
    experiment: the experiment (e.g. dpm_jax.images.MNIST).
    config: a config of it (e.g. experiment.default_config()).
    workdir: the run directory; a new one under config.output_dir if None.
    dataset: the stored examples; loaded from config.data if None.
    devices: the devices the batch is split over (evaluation too); if None,
      the execution plan's.
    resume_verified: if the newest checkpoint is corrupt, resume from the
      newest that verifies (the corrupt ones are moved aside), not fail.

  Raises:
    errors.Stopped: on SIGINT or SIGTERM, after the last completed step was saved.
    errors.UserError: train.max_nonfinite_steps non-finite losses in a row (or one
      at the last step), a field outside its domain, data that cannot be read, a
      workdir that cannot be written, is full or is in use, or a checkpoint that is
      corrupt or does not fit the config.
  """
  experiment_lib.validate(experiment, config)
  maybe_initialize_distributed()
  plan = execution.plan(config.compute, config.train.batch_size, experiment.make_model(config),
                        devices)
  report(f"Execution plan: {plan.describe()}.")
  workdir = workdir or create_workdir(config)
  free = rundir.prepare_workdir(workdir)  # before loading data and compiling
  # One writer: process 0 holds the lock (the others of a multi-host job share the workdir).
  lock = rundir.WorkdirLock(workdir) if jax.process_index() == 0 else None
  with safety.StopSignals("training") as stop, lock or contextlib.nullcontext():
    if lock:
      stop.cleanups.append(lock.release)
    manager = rundir.make_manager(workdir, config.train.keep_checkpoints)
    try:
      with execution.matmul_precision(config.compute):
        return _train(config, experiment, workdir, manager, dataset, plan, resume_verified,
                      free, stop)
    finally:
      rundir.close_quietly(manager)


def _train(config, experiment, workdir, manager, dataset, plan, resume_verified, free,
           stop) -> step_lib.TrainState:
  """The loop of train_and_evaluate, in a locked workdir with its checkpoint manager."""
  cfg = config.train
  par = plan.par
  dataset = dataset if dataset is not None else experiment.load_data(config)
  steps_per_epoch, num_steps = schedule_steps(config, len(dataset.train))
  tx = optim.make_optimizer(config.optimizer, steps_per_epoch)
  task, state, start = restore_or_create(experiment, config, workdir, manager, tx, dataset,
                                         resume_verified)
  if start >= num_steps:
    report(f"This run is complete: step {start} of {num_steps}, in {os.path.abspath(workdir)} "
           "(metrics.jsonl, samples/, checkpoints/). Raise --config.train.num_steps to train on.")
    return state
  keys = run_keys(config.seed)
  unit = experiment.unit
  batches = data_lib.train_batches(task.data.train, cfg.batch_size, config.seed, start,
                                   process_index=jax.process_index(),
                                   process_count=jax.process_count(),
                                   workers=config.data.get("workers", 0))
  train_step = step_lib.jit_train_step(task, plan)
  state = par.put_replicated(state)
  meta = write_run_files(config, workdir, task)
  saver = safety.Saver(manager, meta, task)
  schedule = optim.learning_rate_schedule(config.optimizer, steps_per_epoch)
  evaluator = evaluate_lib.make_test_evaluator(task, config.eval, par, key=keys.eval)
  sampler = sampling.make_sampler(task.model, num_images=cfg.sample_num_images)
  throughput = metrics_lib.Throughput(cfg.batch_size)
  actions = {  # the interruptible periodic actions: (when, what) -> metrics
      "eval": (cfg.eval_every_steps, lambda step, state: evaluate_test(
          evaluator, state, step, unit, stop, task.units.summary)),
      "samples": (cfg.sample_every_steps, lambda step, state: write_samples(
          task, sampler, state, step, workdir, keys.sample, stop))}
  log_start(task, config, start, num_steps, state, workdir, free)
  t_start = time.time()
  with metrics_lib.MetricWriter(workdir, start) as writer:
    finish_pending(workdir, start, state, actions, writer, num_steps, unit)
    for step in range(start + 1, num_steps + 1):
      batch = par.put_local_batch(next(batches), cfg.batch_size)
      state, step_metrics = train_step(state, batch, keys.train)
      throughput.tick()
      if step == start + 1:
        stop.arm()  # from now on a stop signal saves this step before exiting
        report(f"step {step}/{num_steps}: train bound {float(step_metrics['loss']):.4f} "
               f"bits/{unit} (this step); compiled and ran; progress with speed and ETA "
               f"every {cfg.log_every_steps} steps")
      check_finite(state, step, num_steps, cfg.max_nonfinite_steps, saver)
      rundir.check_save_errors(manager)
      record = {}
      if is_time(step, cfg.log_every_steps, num_steps):
        record.update(train_metrics(state, step_metrics, schedule, step, throughput))
        metrics_lib.log_progress(step, num_steps, steps_per_epoch, record,
                                 time.time() - t_start, step - start, unit)
        state = state.replace(loss_sum=jnp.zeros_like(state.loss_sum),
                              loss_count=jnp.zeros_like(state.loss_count))
      if step == num_steps or is_time(step, cfg.checkpoint_every_steps, num_steps):
        saver.save(step, state)
      due = [name for name, (every, _) in actions.items() if is_time(step, every, num_steps)]
      pending = run_actions(actions, due, step, state, record, stop)
      if pending:  # a stop signal interrupted them: the record waits for them
        raise interrupt(saver, stop, workdir, step, state, record, pending)
      if record:
        writer.write(step, record)
      if is_time(step, cfg.eval_every_steps, num_steps):
        plot_curves(workdir, unit)
      if stop.should_stop():
        raise interrupt(saver, stop, workdir, step, state)
      if step == start + 1 or due:  # examples/s counts training steps, not compiling or actions
        throughput.reset()
  rundir.check_save_errors(manager, wait=True)  # the last save, cause first
  return state


# ----------------------------------------------------------------------------
# Periodic actions.


def train_metrics(state, step_metrics, schedule, step, throughput) -> dict:
  """The train/* metrics of the steps since the last log (the loss's mean over them)."""
  count = int(state.loss_count)
  nonfinite = optim.nonfinite_counts(state.opt_state)
  return {
      "train/loss": float(state.loss_sum) / count if count else None,
      "train/finite_steps": count,
      "train/learning_rate": float(schedule(step - 1)),
      "train/nonfinite_tensors": int(nonfinite.last),
      "train/nonfinite_tensors_total": int(nonfinite.total),
      **{"train/" + k: float(v) for k, v in step_metrics.items() if k != "loss"},
      **throughput.lap()}


def evaluate_test(evaluator, state, step, unit, stop, summary) -> dict:
  """The periodic test bound (eval/*), polling for a stop between batches."""
  record = evaluator(state.eval_params, should_stop=stop.should_stop)
  record["eval/ema_params"] = hasattr(state, "ema_params")  # which parameters it used
  report(f"step {step}: eval bound {record['eval/loss']:.4f} +- "
         f"{record['eval/loss_stderr']:.4f} bits/{unit} (-(K-L_null))" + summary(record))
  return record


def write_samples(task, sampler, state, step, workdir, key, stop) -> dict:
  """A picture of samples, workdir/samples/step_<8-digit step>.png (process 0)."""
  samples = sampler(state.eval_params, key, should_stop=stop.should_stop)
  if jax.process_index() == 0:
    if not np.all(np.isfinite(np.asarray(samples))):
      logging.warning("step %d: the samples are not finite; no picture written.", step)
      return {}
    path = os.path.join(workdir, "samples", f"step_{step:08d}.png")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    task.experiment.write_picture({"samples": task.units.to_output(samples)}, path, task.units)
    logging.info("step %d: %d samples -> %s", step, len(samples), path)
  return {}


def run_actions(actions, names, step, state, record, stop) -> list:
  """Runs the named actions in order, adding their metrics to `record`; returns
  the names a stop signal left undone."""
  names = list(names)
  try:
    while names:
      record.update(actions[names[0]][1](step, state))
      names.pop(0)
  except errors.Stopped:
    pass
  return names


def plot_curves(workdir, unit) -> None:
  if jax.process_index() == 0:
    plotting.plot_learning_curves(metrics_lib.read_metrics(workdir),
                                  os.path.join(workdir, "learning_curves.png"), unit)


def finish_pending(workdir, start, state, actions, writer, num_steps, unit) -> None:
  """Runs the actions a stop signal interrupted at step `start`, then writes its record."""
  path = os.path.join(workdir, PENDING_FILE)
  pending = outputs.read_json(path)
  if pending is None:
    return
  if pending["step"] == start:
    logging.info("step %d: finishing what a stop interrupted: %s", start,
                 ", ".join(pending["actions"]))
    record = dict(pending["record"])
    for name in pending["actions"]:
      record.update(actions[name][1](start, state))
    if record:
      writer.write(start, record)
    if is_time(start, actions["eval"][0], num_steps):
      plot_curves(workdir, unit)
  os.remove(path)


# ----------------------------------------------------------------------------
# Restoring, and what a run writes.


def restore_or_create(experiment, config, workdir, manager, tx, dataset, resume_verified):
  """(task, state, start step): from the newest checkpoint (with resume_verified, the
  newest that verifies), or new at step 0.

  A checkpoint made with settings that may not change (config_lib.FIXED_ON_RESUME)
  is an error naming every differing field; the others are logged and used.
  """
  def restore_step(step):
    meta = rundir.read_meta(manager, step)
    # Only the fields fixed on resume matter here, and those are compared below.
    saved = experiment_lib.saved_config(experiment, meta["config"], os.path.join(
        rundir.checkpoint_dir(workdir), str(step)), check=False)
    changes = config_lib.changes(rundir.config_to_dict(saved), rundir.config_to_dict(config))
    error = config_lib.resume_error(changes, workdir)
    if error:
      raise errors.UserError(error)
    if bool(saved.train.ema_decay) != bool(config.train.ema_decay):
      raise errors.UserError(
          f"train.ema_decay: checkpoint {saved.train.ema_decay}, now {config.train.ema_decay}: "
          "the average starts at a run's first step, so it is on or off for the whole run "
          "(its decay may change); keep it as the run has it, or use a new --workdir.")
    check_same_data(meta.get("data"), dataset, workdir)
    task = experiment_lib.build(experiment, config, dataset, meta["data_stats"])
    target = jax.eval_shape(lambda: step_lib.create_train_state(
        task.model, diffusion.init_params(task.model, jax.random.key(0)), tx,
        config.train.ema_decay))
    state = rundir.restore(manager, step, target)[0]
    saved_fields = dict(config_lib.leaves(ml_collections.ConfigDict(meta["config"])))
    for change in changes:  # said once the checkpoint has restored and verified
      logging.info("Resuming with a changed setting: %s%s", change,
                   "" if change.field in saved_fields
                   else " (the checkpoint predates the field: its default)")
    return task, state

  if resume_verified:
    start, restored = rundir.restore_newest_verified(manager, restore_step)
  else:
    start = rundir.latest_step(manager)
    restored = None if start is None else restore_step(start)
  if start is None:
    report(f"No checkpoint in {rundir.checkpoint_dir(workdir)}: starting at step 0.")
    task = experiment_lib.build(experiment, config, dataset)
    params = diffusion.init_params(task.model, run_keys(config.seed).init)
    return task, step_lib.create_train_state(task.model, params, tx, config.train.ema_decay), 0
  report(f"Resumed from step {start} in {workdir}")
  return (*restored, start)


def check_same_data(recorded: Optional[dict], dataset: data_lib.Dataset, workdir: str) -> None:
  """Raises errors.UserError if a run resumes on other examples than it was trained on."""
  if recorded and recorded.get("fingerprint") not in (None, data_lib.fingerprint(dataset)):
    where = ", ".join(f"{k} {recorded[k]}" for k in ("dataset", "dir") if recorded.get(k))
    raise errors.UserError(
        f"The run in {workdir} was trained on other data ({recorded.get('source')}"
        f"{': ' + where if where else ''}, {recorded.get('num_train')} train / "
        f"{recorded.get('num_test')} test examples) than these ({dataset.name}: "
        f"{len(dataset.train)} train / {len(dataset.test)} test examples); "
        "resume it on the same data, or use a new --workdir.")


def interrupt(saver, stop, workdir, step, state, record=None, pending=()) -> errors.Stopped:
  """Saves the state of `step` (if finite), notes the actions a stop left undone
  and the record that waits for them, and returns the errors.Stopped to raise."""
  signum = stop.requested
  name = "SIGINT" if signum == 2 else "SIGTERM"
  if pending:
    outputs.write_json(os.path.join(workdir, PENDING_FILE),
                      {"step": step, "record": record, "actions": pending})
  if not saver.save(step, state):
    return errors.Stopped(f"{name}: stopped at step {step}, whose state is not finite: not "
                          f"saved. {saver.last_good()}", signum)
  rundir.check_save_errors(saver.manager, wait=True)
  return errors.Stopped(f"{name}: saved step {step} in {rundir.checkpoint_dir(workdir)}; "
                        "rerun the same command to resume.", signum)


def write_run_files(config, workdir, task) -> dict:
  """config.json and data_stats.json; returns the metadata saved with checkpoints."""
  data = task.data.record()
  if jax.process_index() == 0:
    outputs.write_json(os.path.join(workdir, "config.json"), rundir.config_to_json(config))
    outputs.write_json(os.path.join(workdir, "data_stats.json"),
                       {**task.units.to_dict(), "data": data})
  return {"config": rundir.config_to_dict(config), "data_stats": task.units.to_dict(),
          "data": data}


def schedule_steps(config: ml_collections.ConfigDict, n_train: int) -> tuple[int, int]:
  """(steps per epoch, total steps) of config.train."""
  steps_per_epoch = (config.train.batches_per_epoch
                     or data_lib.steps_per_epoch(n_train, config.train.batch_size))
  return steps_per_epoch, config.train.num_steps or config.train.num_epochs * steps_per_epoch


def create_workdir(config: ml_collections.ConfigDict) -> str:
  """<output_dir>/dpm_<experiment><suffix>-<yymmddTHHMMSS>."""
  name = f"dpm_{config.experiment}{config.suffix}" + time.strftime("-%y%m%dT%H%M%S")
  return os.path.join(os.path.expanduser(config.output_dir), name)


# ----------------------------------------------------------------------------
# Progress, and stopping on non-finite losses.


def report(line: str) -> None:
  """A progress line: through absl's log where it shows INFO (the entry points),
  else printed, so that training from Python shows its progress too."""
  if logging.level_info():
    logging.info("%s", line)
  else:
    print(line, flush=True)


def log_start(task, config, start, num_steps, state, workdir, free):
  ema = config.train.ema_decay
  report(
      f"Training {task.experiment.name} ({task.model.__class__.__name__}) on {task.data.name}: "
      f"{len(task.data.train)} train / {len(task.data.test)} test examples, batch "
      f"{config.train.batch_size}, "
      f"steps {start}..{num_steps}, {diffusion.count_params(state.params)} parameters"
      + (f" (evaluated and sampled as their moving average, decay {ema})" if ema else "")
      + f", workdir {workdir} ({free / 2**20:.0f} MiB free, "
      f"{rundir.state_nbytes(state) / 2**20:.1f} MiB a checkpoint)")


def check_finite(state, step, num_steps, max_steps, saver):
  """Raises errors.UserError after max_steps non-finite losses in a row, or if
  the final state is not healthy; no checkpoint is saved while it is not."""
  streak = int(state.nonfinite_streak)
  last = step == num_steps
  if streak >= max_steps or (last and not saver.healthy(state)):
    raise errors.UserError(
        f"The training loss was non-finite for {streak} consecutive step(s), up to step "
        f"{step}{' (the last, whose state is not finite)' if last else ''}; no checkpoint is "
        f"saved while it is. {saver.last_good()} Lower --config.optimizer.learning_rate (and "
        "optimizer.min_learning_rate, its floor), check the data for NaN/Inf, or raise "
        "train.max_nonfinite_steps.")


def maybe_initialize_distributed() -> None:
  """Joins a multi-host job when the environment describes one (a coordinator address,
  several SLURM tasks or TPU workers); it must run before JAX starts its backends."""
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

