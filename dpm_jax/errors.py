"""The two exceptions the library raises on purpose.

UserError: input the user can fix (a config or flag value, data, a checkpoint,
a run directory, a result that came out NaN). Its message names the problem
and the fix; the entry points print it as one line and exit with code 2.

Stopped: a stop signal (SIGINT, SIGTERM) ended the work. Work that polls for
a stop raises it without a signal number; whoever installed the signal
handlers (dpm_jax.safety.StopSignals) knows it, and the entry points exit
with 128 + the signal's number (130, 143).
"""

from typing import Optional


class UserError(Exception):
  """Bad input the user can fix; the message says what and how."""


class Stopped(Exception):
  """A stop signal ended the work.

  Attributes:
    signum: the signal's number, or None where the polling code cannot know it.
  """

  def __init__(self, message: str = "stopped", signum: Optional[int] = None):
    super().__init__(message)
    self.signum = signum

  @property
  def code(self) -> int:
    """The process's exit code: 128 + the signal's number, as a shell reports it."""
    return 128 + int(self.signum or 2)
