"""A tqdm progress bar for training loops: one process draws it, and piped logs stay small.

Only process 0 draws by default (every process runs the same loop). When stderr is not a terminal (a log file,
a job scheduler), tqdm cannot redraw in place and every refresh becomes more text, so the bar refreshes at most
every 10 s there, in ASCII; on a terminal at most every second.

The first update of a run includes compiling the step (16 s of a 19 s run on `tiny`), so the bar restarts its clock
after it: rate, elapsed and ETA describe the compiled steps only.
"""

from __future__ import annotations

import sys

import jax
from tqdm import tqdm
from tqdm.std import EMA


class _CompiledStepBar(tqdm):
  """A tqdm bar whose timing starts after the first update (the step that compiled)."""

  _timing_started = False

  def update(self, n=1):
    if self._timing_started or self.disable:
      return super().update(n)
    # The compiling step: counted, the clock restarted, and only then drawn, so no frame shows its rate or ETA.
    self._timing_started = True
    self.n += n
    self.start_t = self.last_print_t = self._time()
    self.last_print_n = self.initial = self.n
    self._ema_dn, self._ema_dt = EMA(self.smoothing), EMA(self.smoothing)
    self.refresh()
    return True

  def set_postfix(self, ordered_dict=None, refresh=False, **kwargs):
    """New fields (the loss after every step) without a redraw: the next update shows them, at most every
    `mininterval`. tqdm's default redraws at once, which in a log file is a line per step."""
    super().set_postfix(ordered_dict, refresh=refresh, **kwargs)


def progress(total: int, *, initial: int = 0, desc: str, enabled: bool | None = None) -> tqdm:
  """A bar from `initial` (a resumed step) to `total` with rate and ETA; `bar.set_postfix(loss=...)` adds fields."""
  if enabled is None:
    enabled = jax.process_index() == 0
  tty = sys.stderr.isatty()
  return _CompiledStepBar(
    total=total,
    initial=initial,
    desc=desc,
    unit="step",
    file=sys.stderr,
    disable=not enabled,
    mininterval=1.0 if tty else 10.0,
    ascii=not tty,
    dynamic_ncols=tty,
    smoothing=0.1,  # rate/ETA over roughly the last ten refreshes: steady, yet follows real slow-downs
  )
