"""TensorBoard event files written with the `tensorboard` package alone (no TensorFlow).

Scalars are `Summary.Value(simple_value=...)`, the form TensorBoard's loader migrates to its scalars plugin, so
they appear on the Scalars dashboard; text uses the text plugin's own proto (`text_pb`), shown on the Text tab.
Values are stored as float32, NaN and ±inf as they are (TensorBoard plots them as such). Only one process
writes: by default process 0 of a multi-process job; on the others the writer does nothing and creates no file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.text import summary_v2 as text_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class ScalarWriter:
  """Appends scalars (and text) per step to a new event file in `logdir`."""

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool | None = None):
    self.logdir = os.fspath(logdir)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._closed = False
    # The file is created here, so a writer that cannot create it fails at start-up, not at the first log.
    # flush_secs: how stale a live dashboard may be; a full queue (10 events) flushes earlier.
    self._writer = EventFileWriter(self.logdir, flush_secs=30) if self.enabled else None

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """One event with every `tag: value` at `step`; values go through `float()` (a jax scalar waits for its
    computation)."""
    if not self._writable():
      return
    summary = summary_pb2.Summary()
    for tag, value in values.items():
      try:
        number = float(value)
      except (TypeError, ValueError) as e:
        raise TypeError(f"{self.logdir}: scalar {tag!r} at step {step} is not a number: {value!r}") from e
      summary.value.add(tag=tag, simple_value=number)
    self._add(step, summary)

  def text(self, step: int, tag: str, text: str) -> None:
    """Markdown text (e.g. the run's config) under `tag` at `step`."""
    if self._writable():
      self._add(step, text_summary.text_pb(tag, text))

  def _writable(self) -> bool:
    if self._closed:
      raise RuntimeError(f"ScalarWriter({self.logdir}) is closed; open a new one to keep logging")
    return self._writer is not None

  def _add(self, step: int, summary: summary_pb2.Summary) -> None:
    self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    if self._writer is not None and not self._closed:
      self._writer.flush()

  def close(self) -> None:
    """Flushes and closes the file; closing twice is harmless."""
    if self._writer is not None and not self._closed:
      self._writer.close()
    self._closed = True

  def __enter__(self) -> ScalarWriter:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
