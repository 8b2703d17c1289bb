"""The step loop shared by target pretraining and drafter distillation.

The two loops differ in what one step, one log line and one evaluation are; everything around them is here:

  cadence      log every `train.log_every` steps, evaluate every `train.eval_every`, checkpoint every
               `train.checkpoint_every`, and all three at the last step
  non-finite   a step whose metrics are not all finite stops the run before saving it (`TrainingError` names the
               step and the last good checkpoint)
  throughput   tokens per second over the steps since the last log line, evaluation and saving not counted
  data state   every process's data-stream position, gathered into the checkpoint that process 0's metadata writes
  stopping     SIGINT / SIGTERM (dsv4.training.interrupts): the current step finishes, is saved on every process,
               the save commits, and `Interrupted` is raised
  progress     one bar (process 0), with the step's chosen metrics

A loop supplies `step(state, step) -> (state, StepOut)`, `log(done, window, tokens_per_s)`,
`evaluate(state, done, metrics) -> dict` (merged into the metadata and `last`) and `data_state() -> dict`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from dsv4.errors import ConfigError, TrainingError
from dsv4.parallel.config import mesh_from_config, rules_from_config
from dsv4.parallel.distributed import is_main
from dsv4.parallel.rules import logical_to_spec
from dsv4.training.checkpointing import TrainCheckpointer
from dsv4.training.interrupts import Interrupted, StopSignals
from dsv4.training.progress import progress
from dsv4.training.workdir import check_shared

_active: list[StopSignals] = []  # the handler of the run in progress (innermost last)


def stoppable(run):
  """Decorates a training run: SIGINT / SIGTERM become stop requests from its first line to its last, so that no
  signal interrupts loading, compiling or a save midway; one received before the step loop stops it after its first
  step, one received after it lets the run end as it would have."""
  @functools.wraps(run)
  def wrapped(*args, **kwargs):
    with StopSignals() as stop:
      _active.append(stop)
      try:
        return run(*args, **kwargs)
      finally:
        _active.pop()
  return wrapped


@dataclasses.dataclass
class StepOut:
  metrics: dict[str, float]  # host floats; all must be finite
  tokens: float              # tokens this step trained on (global)
  seconds: float             # step time (what the run's `seconds` and MFU count)
  record: Any = None         # what the loop's `log` pools over the window (default: `metrics`)


@dataclasses.dataclass
class Totals:
  """Counters carried across resumes in the checkpoint metadata."""
  tokens_seen: float = 0.0
  seconds: float = 0.0
  session_seconds: float = 0.0  # this process lifetime's step time
  session_steps: int = 0


def log(msg: str) -> None:
  if is_main():
    print(msg, flush=True)


def report(msg: str) -> None:
  """A line between progress-bar refreshes (process 0)."""
  if is_main():
    tqdm.write(msg)


def gather_process_states(local: dict) -> list[dict]:
  """Every process's JSON-native `local` dict, in process order (identical on every process).

  JSON of any length: the byte lengths are gathered first, then every text padded to the longest.
  """
  if jax.process_count() == 1:
    return [local]
  text = np.frombuffer(json.dumps(local).encode(), np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int64(text.size))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:text.size] = text
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(jax.process_count(), -1)
  return [json.loads(bytes(row[:n])) for row, n in zip(rows, lengths, strict=True)]


def find_run(directory: Path) -> tuple[int | None, dict | None]:
  """The newest finished checkpoint step in `directory` and its metadata, read without creating anything (a refused
  or failed start leaves no trace); says so when an interrupted save left a temporary folder."""
  if not directory.is_dir():
    return None, None
  with TrainCheckpointer(directory, every=1) as ckpt:
    latest = ckpt.latest_step()
    _note_unfinished(ckpt, latest)
    return latest, None if latest is None else ckpt.read_meta(latest)


def check_batch(batch_size: int, mesh, rules) -> None:
  axes = logical_to_spec(("batch",), rules)[0] or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  ways = math.prod(mesh.shape[a] for a in axes)
  if batch_size % ways:
    raise ConfigError(f"config.train.batch_size={batch_size} does not divide over the batch mesh axes {axes} "
                      f"({ways} ways); use a multiple of {ways} or change config.mesh / config.rules.")


def open_run(config, workdir: Path) -> tuple:
  """(mesh, rules, latest step or None, its meta) of a run about to start or resume in `workdir`, after the checks
  that need no data or compute: the batch divides over the mesh, every process sees the same workdir."""
  mesh, rules = mesh_from_config(config), rules_from_config(config)
  check_batch(config.train.batch_size, mesh, rules)
  check_shared(workdir)
  latest, saved_meta = find_run(workdir / "checkpoints")
  return mesh, rules, latest, saved_meta


def _note_unfinished(ckpt: TrainCheckpointer, latest: int | None) -> None:
  """Says so when an interrupted save left a temporary folder (never restored; the next save removes it)."""
  left = ckpt.unfinished()
  if not left:
    return
  if latest is None:
    log(f"{ckpt.directory} holds only an unfinished checkpoint ({', '.join(left)}), left by an interrupted save; "
        "it cannot be restored: starting over from step 0")
  else:
    log(f"{ckpt.directory} also holds an unfinished checkpoint ({', '.join(left)}), left by an interrupted save; "
        f"resuming from the last finished one, step {latest}")


def _stop_on_non_finite(ckpt: TrainCheckpointer, done: int, metrics: dict, what: str) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if not bad:
    return
  ckpt.wait()
  kept = ckpt.latest_step()
  ckpt.close()
  raise TrainingError(f"non-finite {what} {bad} at step {done}; stopped without saving it. The last good checkpoint "
                      f"is {'none' if kept is None else ckpt.directory / str(kept)}; lower config.train.lr or check "
                      "the data, then re-run to resume from it.")


def run_steps(*, train, state, start: int, ckpt: TrainCheckpointer, meta: dict, totals: Totals,
              step: Callable, log_window: Callable, evaluate: Callable, data_state: Callable[[], dict],
              data_key: str, desc: str, postfix: dict[str, str], eval_keys: tuple[str, ...],
              what: str = "loss") -> tuple[Any, dict, dict]:
  """Trains from `start` to `train.steps`; returns `(state, meta, last)` where `last` holds the last step's loss
  and the last evaluation's results. Waits for the last save but leaves `ckpt` open.

  `meta` is updated with `totals`, the last loss and the last evaluation's `eval_keys` before every save. `data_key`
  names the gathered list of process data states in the checkpoint's `data_state` item.
  """
  t = train
  last: dict = {"loss": math.nan, **dict.fromkeys(eval_keys)}
  bar = progress(int(t.steps), initial=start, desc=desc)
  window, window_tokens, window_seconds = [], 0.0, 0.0
  tick = time.perf_counter()
  with contextlib.nullcontext(_active[-1]) if _active else StopSignals() as stop:
    for i in range(start, int(t.steps)):
      state, out = step(state, i)
      done = i + 1
      _stop_on_non_finite(ckpt, done, out.metrics, what)
      totals.tokens_seen += out.tokens
      totals.seconds += out.seconds
      totals.session_seconds += out.seconds
      totals.session_steps += 1
      window.append(out.metrics if out.record is None else out.record)
      window_tokens += out.tokens
      last["loss"] = out.metrics["loss"]
      bar.update(1)
      bar.set_postfix({name: f"{out.metrics[key]:.3f}" for name, key in postfix.items()})
      window_seconds += time.perf_counter() - tick
      # Asked on every process after every step (they must agree on the step); the last step ends the run anyway.
      stopping = stop.should_stop(done) and done < t.steps
      if done % t.log_every == 0 or done == t.steps or stopping:
        log_window(done, window, window_tokens / max(window_seconds, 1e-9))
        window, window_tokens, window_seconds = [], 0.0, 0.0
      if (done % t.eval_every == 0 or done == t.steps) and not stopping:  # a preemption grace period is short
        last.update(evaluate(state, done, out.metrics))
      meta.update({"tokens_seen": totals.tokens_seen, "seconds": totals.seconds, "loss": out.metrics["loss"],
                   **{k: last[k] for k in eval_keys}})
      if done % t.checkpoint_every == 0 or done == t.steps or stopping:
        ckpt.save(done, state, {data_key: gather_process_states(data_state())}, meta,
                  force=done == t.steps or stopping)
      if stopping:
        bar.close()
        ckpt.wait()  # the save commits before the process may exit
        kept = ckpt.latest_step()
        ckpt.close()
        raise Interrupted(done, stop.signum, str(ckpt.directory / str(kept)) if kept == done else None)
      tick = time.perf_counter()
  bar.close()
  ckpt.wait()
  return state, meta, last
