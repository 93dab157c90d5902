"""What keeps a run safe: stop signals, and checkpoints of finite states only (the
workdir lock is dpm_jax.rundir.WorkdirLock).
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from typing import Callable, List, Optional

from absl import logging
import jax
import jax.numpy as jnp

from dpm_jax import diffusion
from dpm_jax import errors
from dpm_jax import rundir
from dpm_jax import step as step_lib

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
  """SIGINT/SIGTERM -> a request polled between units of work (main thread only).

  Until `arm` (before the first training step completes, or in programs
  with nothing to save) a signal runs `cleanups`, prints one line and exits
  the process at once with 130 (SIGINT) or 143 (SIGTERM): a watcher thread,
  which never touches JAX, is woken through the signal's wakeup file
  descriptor even while the main thread is inside XLA (compiling, say).
  Once armed it sets `requested` (the signal's number), which the loop,
  the evaluations and the sampler poll through `should_stop`.

  Outside the main thread (a worker thread of a notebook) it installs
  nothing and never stops anything.
  """

  def __init__(self, what: str = "the run"):
    self.what = what
    self.requested: Optional[int] = None
    self.armed = False
    self.cleanups: List[Callable[[], None]] = []
    self._active = False
    self._previous = {}
    self._pipe = self._stop_pipe = None
    self._wakeup = None

  def should_stop(self) -> bool:
    return self.requested is not None

  def arm(self) -> None:
    """From now on a signal is a request to stop at the next check, not an exit."""
    self.armed = True

  def _handler(self, signum, frame):
    del frame
    if not self.armed:
      return  # the watcher thread ends the process
    if self.requested is None:
      logging.warning("%s: stopping %s at the next step.", signal.Signals(signum).name, self.what)
    self.requested = signum

  def _exit_now(self, signum: int) -> None:
    for cleanup in self.cleanups:
      try:
        cleanup()
      except Exception:  # pylint: disable=broad-except
        pass
    sys.stderr.write(f"{signal.Signals(signum).name}: stopped {self.what} (nothing to save).\n")
    sys.stderr.flush()
    os._exit(128 + int(signum))  # as a shell reports it

  def _watch(self):
    read_fd, stop_fd = self._pipe[0], self._stop_pipe[0]
    while True:
      ready, _, _ = select.select([read_fd, stop_fd], [], [])
      if stop_fd in ready:
        return
      for byte in os.read(read_fd, 64):
        if byte not in SIGNALS:
          continue
        if not self.armed:
          self._exit_now(byte)
        if self.requested is None:  # armed since: the handler may have run before
          self.requested = byte

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      return self
    self._pipe, self._stop_pipe = os.pipe(), os.pipe()
    os.set_blocking(self._pipe[1], False)
    for signum in SIGNALS:
      self._previous[signum] = signal.signal(signum, self._handler)
    self._wakeup = signal.set_wakeup_fd(self._pipe[1], warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name="dpm-jax-stop-signals", daemon=True).start()
    self._active = True
    return self

  def __exit__(self, *exc) -> bool:
    if self._active:
      signal.set_wakeup_fd(self._wakeup)
      for signum, previous in self._previous.items():
        signal.signal(signum, previous)
      os.write(self._stop_pipe[1], b"x")
      self._active = False
    return False


PROBE_EXAMPLES = 64


class Saver:
  """Saves finite states only, so pruning old checkpoints never removes the last good one.

  Healthy: the loss of the step that made the state was finite, all its
  arrays are finite, and so is the loss at its own parameters on a fixed
  batch of training examples (a step that diverged leaves finite but huge
  parameters whose next loss is NaN).
  """

  def __init__(self, manager, meta: dict, task):
    self.manager, self.meta = manager, meta
    loss_fn = diffusion.make_loss_fn(task.model, uniform_noise=task.units.uniform_noise, train=True)
    probe = task.data.train[:PROBE_EXAMPLES]
    self._probe_loss = jax.jit(
        lambda params: loss_fn(params, task.units.to_model(probe), jax.random.key(0))[0])

  def healthy(self, state) -> bool:
    return (not int(state.nonfinite_streak) and bool(step_lib.all_finite(state))
            and bool(jnp.isfinite(self._probe_loss(state.params))))

  def save(self, step: int, state) -> bool:
    """Saves the state at `step` (asynchronously) if it is healthy; whether it did.

    Raises:
      errors.UserError: the disk has no room for it (rundir.check_space).
    """
    if step in self.manager.all_steps():
      return True  # saved already
    if not self.healthy(state):
      logging.warning("step %d: no checkpoint saved: the loss or the state is not finite.", step)
      return False
    rundir.check_space(self.manager, rundir.state_nbytes(state))
    rundir.save(self.manager, step, state, self.meta)
    return True

  def last_good(self) -> str:
    """Where to go on from: the newest checkpoint, and how to resume from it."""
    if not self.manager.all_steps():
      return rundir.last_good(self.manager) + " Start again with other settings."
    return (rundir.last_good(self.manager) +
            " Rerun with the same --workdir and other settings to resume from it.")


def stoppable(what: str, fn: Callable):
  """fn(should_stop) under StopSignals, armed: a stop signal raises errors.Stopped naming
  the signal (exit 130 / 143), and nothing was written."""
  with StopSignals(what) as stop:
    stop.arm()
    try:
      return fn(stop.should_stop)
    except errors.Stopped as err:
      name = "SIGINT" if stop.requested == 2 else "SIGTERM"
      raise errors.Stopped(f"{name}: stopped {what}; nothing was written.",
                           stop.requested) from err
