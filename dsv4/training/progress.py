"""A tqdm progress bar for training loops: one process draws it, and piped logs stay small.

Only process 0 draws by default (every process runs the same loop). When stderr is not a terminal (a log file,
a job scheduler), tqdm cannot redraw in place and every refresh becomes more text, so the bar refreshes at most
every 10 s there, in ASCII; on a terminal at most every second.
"""

from __future__ import annotations

import sys

import jax
from tqdm import tqdm


def progress(total: int, *, initial: int = 0, desc: str, enabled: bool | None = None) -> tqdm:
  """A bar from `initial` (a resumed step) to `total` with rate and ETA; `bar.set_postfix(loss=...)` adds fields."""
  if enabled is None:
    enabled = jax.process_index() == 0
  tty = sys.stderr.isatty()
  return tqdm(
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
