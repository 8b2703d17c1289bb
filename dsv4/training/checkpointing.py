"""Training checkpoints: the array state, data-loader state and run metadata of one step, saved together by orbax.

A step is one directory `<directory>/<step>/` with three items: `state` (a pytree of jax arrays; every process
writes the shards it owns), `data_state` and `meta` (JSON; the primary process writes them). orbax writes a step
into `<step>.orbax-checkpoint-tmp` and renames it to `<step>` only once every item of every process is committed,
so a directory named by its step alone is complete. A killed or failed save leaves at most the temporary directory:
`latest_step` never reports it, and the next save deletes it.

Saves are asynchronous by default: `save` returns once the arrays are copied to host memory (the caller may then
donate or overwrite them) and a background thread writes the files. A failed background write is raised as a
`CheckpointSaveError` naming the step by the next `save`, `wait`, `latest_step` or `close`; the failed step is never
reported as saved, and older checkpoints are deleted (beyond `keep`) only after a newer one is complete.

Multi-process: every process must call `__init__`, `save`, `restore` and `close` with the same arguments and in
the same order (orbax syncs them with barriers; `restore` reads each process's own shards); the directory must be
one shared filesystem (or bucket) for all of them. `latest_step` and `wait` are local.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from dsv4.errors import CheckpointError, CheckpointSaveError, brief

log = logging.getLogger(__name__)

_ITEMS = ("state", "data_state", "meta")
_TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's marker of an unfinished step directory (atomicity_types)


class TrainCheckpointer:
  """Saves every `every` steps into `directory`, keeping the newest `keep` finished checkpoints."""

  def __init__(self, directory: str | epath.PathLike, *, every: int, keep: int = 3, async_save: bool = True):
    if every < 1 or keep < 1:
      raise ValueError(f"TrainCheckpointer({directory}): every and keep must be >= 1, got every={every}, keep={keep}")
    self.directory = epath.Path(directory)
    if "://" not in str(directory):  # bucket URLs are absolute already
      self.directory = self.directory.absolute()
    if self.directory.exists() and not self.directory.is_dir():
      raise CheckpointError(f"checkpoint directory {self.directory} is a file; pass a directory path")
    self.every = every
    options = ocp.CheckpointManagerOptions(
      preservation_policy=checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=async_save,
      create=True,
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
    self._pending: int | None = None  # step whose save may still be running or may have failed
    self._latest_finished: int | None = None  # the latest step while `_pending` runs

  # ---- saving ----

  def save(self, step: int, state: Any, data_state: dict, meta: dict, *, force: bool = False) -> bool:
    """Saves when `step % every == 0` or `force`; returns whether a save started.

    `data_state` and `meta` must be JSON-native (dict/list/str/int/float/bool/None, string keys) so that restore
    returns equal dicts. A step that is already saved is not saved again (False); a step older than the newest
    checkpoint is an error, since `latest_step` would never pick it. Stopping on a preemption is the training
    loop's decision (dsv4.training.interrupts), which then saves with `force`.
    """
    if not (force or step % self.every == 0):
      return False
    self._check_json(step, data_state=data_state, meta=meta)
    self._raise_pending()
    latest = self._manager.latest_step()
    if latest is not None and step == latest:
      return False
    if latest is not None and step < latest:
      raise CheckpointError(
        f"cannot save step {step} into {self.directory}: it already holds the newer step {latest}; "
        "restore that step or use a fresh directory"
      )
    self._remove_unfinished()
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state), data_state=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)
    )
    try:
      self._manager.save(step, args=args, force=True)
    except Exception as e:
      self._manager.reload()  # what is on disk is what counts
      raise CheckpointSaveError(f"saving step {step} to {self.directory} failed: {e}", step) from e
    self._pending, self._latest_finished = step, latest
    return True

  def wait(self) -> None:
    """Blocks until the running save is finished; raises `CheckpointSaveError` if it failed."""
    self._raise_pending()

  def _raise_pending(self) -> None:
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      # orbax forgets the failed step, but also already forgot the steps this save was to replace (`keep`), which
      # are still on disk: list the directory again.
      self._manager.reload()
      raise CheckpointSaveError(f"saving step {step} to {self.directory} failed: {e}", step) from e

  def _check_json(self, step: int, **items: dict) -> None:
    for name, value in items.items():
      if not isinstance(value, dict):
        raise TypeError(f"checkpoint step {step}: {name} must be a dict, got {type(value).__name__}")
      try:
        json.dumps(value)
      except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint step {step}: {name} is not JSON-serialisable ({e}); convert it first") from e

  def _remove_unfinished(self) -> None:
    # Leftovers of killed or failed saves. Done when saving, not on open, so that merely reading a directory never
    # deletes another writer's in-flight step; our own previous save is finished, and this runs before orbax's
    # start-of-save barrier, so no process is writing.
    if jax.process_index() != 0:
      return
    for path in self.directory.iterdir():
      if _TMP_SUFFIX in path.name:
        try:
          path.rmtree()
        except OSError as e:  # a failed save's writer threads may still be finishing; it is garbage either way
          log.warning("could not remove the unfinished checkpoint %s yet (%s); retrying at the next save", path, e)

  # ---- reading ----

  def latest_step(self) -> int | None:
    """The newest finished step, or None. A save still in progress is not counted (nor waited for)."""
    if self._pending is not None:
      if self._manager.is_saving_in_progress():
        return self._latest_finished  # orbax already lists the running step (and not those it replaces)
      self._raise_pending()  # finished: confirm it, or raise its failure
    return self._manager.latest_step()

  def unfinished(self) -> list[str]:
    """Names of temporary step folders that interrupted or failed saves left (never restored; the next save
    deletes them)."""
    if not self.directory.exists():
      return []
    return sorted(p.name for p in self.directory.iterdir() if _TMP_SUFFIX in p.name)

  def read_meta(self, step: int | None = None) -> dict:
    """The `meta` item of `step` (default: the latest) alone, without reading any array."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no finished checkpoint in {self.directory}; nothing to read")
    try:
      out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"the metadata of checkpoint step {step} in {self.directory} is unreadable ({brief(e)}); "
                            f"delete {self.directory / str(step)} to resume from the step before it, or use a new "
                            "--workdir.") from e
    return out["meta"]

  def all_steps(self) -> list[int]:
    """The finished steps, oldest first (waits for a running save)."""
    self.wait()
    return sorted(self._manager.all_steps())

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
    """Returns `(state, data_state, meta)` of `step` (default: the latest).

    `abstract_state` is a pytree of `jax.ShapeDtypeStruct` matching the saved state; arrays are restored straight
    into each leaf's `.sharding` (without one, onto the default device).
    """
    self.wait()
    steps = self._manager.all_steps()
    if not steps:
      raise CheckpointError(f"no finished checkpoint in {self.directory}; nothing to restore (wrong path?)")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise CheckpointError(f"step {step} is not a checkpoint in {self.directory}; available: {sorted(steps)}")
    args = ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data_state=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
    )
    try:
      out = self._manager.restore(step, args=args)
    except Exception as e:
      earlier = [s for s in steps if s < step]
      then = (f"delete {self.directory / str(step)} to resume from step {max(earlier)}" if earlier else
              f"delete {self.directory / str(step)} to start over")
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable ({brief(e)}); {then}, or use "
                            "a new --workdir.") from e
    return out["state"], out["data_state"], out["meta"]

  # ---- lifetime ----

  def close(self) -> None:
    """Waits for the running save (raising its failure) and releases orbax's threads."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> TrainCheckpointer:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
