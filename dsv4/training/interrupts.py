"""Stop requests: SIGINT (Ctrl-C) and SIGTERM (schedulers' preemption) end a training run cleanly.

One handler for both signals. A signal never interrupts the code that is running (a jitted step, an orbax commit):
it only asks the loop to stop after the current step, save that step, wait for the save to commit, and raise
`Interrupted`, which the scripts turn into one line and exit code 128 + signal (130 for SIGINT, 143 for SIGTERM).

Multi-process runs must stop at the same step on every process, or the others hang in the next step's collectives.
JAX's preemption service already solves this: `jax.distributed.initialize` starts a notifier that catches SIGTERM
(in C++), tells every process through the coordination service, and `reached_preemption_sync_point(step)` then
returns True on all of them at one agreed step. So SIGTERM is left to that notifier there, and SIGINT is turned
into a SIGTERM of this process so that it takes the same path. Single-process runs (and runs with the preemption
service off) use a flag set by the handler instead, agreed over processes by an all-gather where there are several.

A second signal while stopping raises `KeyboardInterrupt` at once: the user insists, the save in flight is lost (an
unfinished save only ever leaves a temporary folder, never a half-written checkpoint).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
  """The run stopped on a signal after saving `step`; `exit_code` is 128 + the signal's number."""

  def __init__(self, step: int, signum: int, checkpoint: str | None):
    self.step, self.signum, self.checkpoint = step, signum, checkpoint
    self.exit_code = 128 + signum
    saved = "checkpoint saved" if checkpoint else "no checkpoint could be saved"
    super().__init__(f"stopped at step {step} ({signal.Signals(signum).name}), {saved}; re-run the same command to "
                     "resume")



def run_or_exit(run: Callable[[], Any]) -> Any:
  """`run()` as the training scripts call it: a `Dsv4Error` exits with its one-line message, a stop on a signal
  (the step finished and saved) prints that and exits 128 + the signal, a second signal while stopping says the
  last step may be unsaved and exits 130. No traceback for any of them."""
  from dsv4.errors import Dsv4Error
  try:
    return run()
  except Dsv4Error as e:
    sys.exit(f"error: {e}")
  except Interrupted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print("interrupted again while stopping; the last step may not be saved. Re-run the same command to resume "
          "from the last checkpoint.", file=sys.stderr, flush=True)
    sys.exit(130)

def _preemption_service():
  """JAX's preemption sync manager when this is a multi-process run that has one, else None."""
  if jax.process_count() == 1:
    return None
  from jax._src import distributed  # the manager multihost_utils.reached_preemption_sync_point uses

  return distributed.global_state.preemption_sync_manager


class StopSignals:
  """Context manager around a training loop: `should_stop(step)`, asked after every step on every process (with the
  same steps everywhere), answers whether to save `step` and stop."""

  def __init__(self):
    self.signum: int | None = None  # the signal this process received, if any
    self._previous: dict[int, object] = {}
    self._jax_service = None

  def __enter__(self) -> StopSignals:
    self._jax_service = _preemption_service()
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only; a run on another thread keeps the defaults
    for sig in SIGNALS:
      if sig == signal.SIGTERM and self._jax_service is not None:
        continue  # JAX's notifier owns SIGTERM; replacing its handler would blind it
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    if self.signum is not None:
      raise KeyboardInterrupt(f"second {signal.Signals(signum).name} while saving: stopped without waiting")
    self.signum = signum
    if self._jax_service is not None:
      os.kill(os.getpid(), signal.SIGTERM)  # into JAX's notifier, which tells every process

  def should_stop(self, step: int) -> bool:
    if self._jax_service is not None:
      stop = bool(multihost_utils.reached_preemption_sync_point(step))
    elif jax.process_count() > 1:  # preemption service off: agree on the flags with one tiny all-gather
      flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
      stop = bool(np.any(np.asarray(flags)))
    else:
      stop = self.signum is not None
    if stop and self.signum is None:
      self.signum = signal.SIGTERM  # told by another process: a preemption
    return stop
