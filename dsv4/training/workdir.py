"""What a training run checks about its --workdir before writing to it.

Shared storage. Every process of a multi-process run writes its own shards into the same checkpoint folders, and
orbax waits until all of them are there: a workdir on each host's local disk would hang at the first checkpoint.
So at start-up process 0 writes a marker holding a fresh random token, hands the token to the others through
JAX's coordination service, and each of them must read that file with that token within a timeout.

Reuse. Re-running the same command resumes; a changed command must not resume by accident. The newest
checkpoint's metadata says what kind of run wrote it (target pretraining, or a drafter of some kind) and with which
config. A change that only alters how the rest of the run is driven (`SAFE_TO_RESUME`: step count, learning rate,
evaluation / logging / checkpoint cadence, mesh) is allowed, printed, and recorded in the run's history
(`meta["resumes"]`); any other change, or another kind of run, is refused before anything is written, naming the
changed fields.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from pathlib import Path

import jax

from dsv4.errors import ConfigError

MARKER = ".shared-workdir-check"
SHARED_TIMEOUT_S = 60.0  # NFS clients may cache a folder's listing for up to a minute (acdirmax)
SAFE_TO_RESUME = ("train.steps", "train.lr", "train.eval_every", "train.eval_batches", "train.log_every",
                  "train.checkpoint_every", "train.keep_checkpoints", "train.async_checkpoints", "mesh.", "rules")

_checks = [0]  # calls so far in this process: every process makes the same calls, so keys stay unique and equal


class WorkdirError(ConfigError):
  """The workdir cannot be used for this run; the message says why and what to use instead."""


# ---- shared storage ----------------------------------------------------------------------------------------

def check_shared(workdir: str | Path, timeout_s: float = SHARED_TIMEOUT_S) -> None:
  """Multi-process runs: raises `WorkdirError` on every process unless all of them see process 0's marker file."""
  if jax.process_count() == 1 or "://" in str(workdir):  # buckets are shared by construction
    return
  from jax._src import distributed  # the coordination service's key-value store; no public handle to it

  client = distributed.global_state.client
  _checks[0] += 1
  key = f"dsv4/workdir_check/{_checks[0]}"
  workdir, me, n = Path(workdir).absolute(), jax.process_index(), jax.process_count()
  marker = workdir / MARKER
  if me == 0:
    token = secrets.token_hex(16)
    workdir.mkdir(parents=True, exist_ok=True)
    marker.write_text(token)
    client.key_value_set(f"{key}/token", token)
  else:
    token = client.blocking_key_value_get(f"{key}/token", int(timeout_s * 1000))
  deadline = time.monotonic() + timeout_s
  while not (seen := _reads(marker, token)) and time.monotonic() < deadline:
    time.sleep(0.5)
  client.key_value_set(f"{key}/seen/{me}", "1" if seen else "0")
  blind = [p for p in range(n) if client.blocking_key_value_get(f"{key}/seen/{p}", int(2 * timeout_s * 1000)) != "1"]
  if me == 0:
    marker.unlink(missing_ok=True)
  if blind:
    raise WorkdirError(
      f"--workdir {workdir}: process(es) {blind} did not see the marker file process 0 wrote there within "
      f"{timeout_s:.0f} s. Every process must be given the same --workdir, on storage all hosts share (NFS, a "
      "parallel filesystem or a bucket), not a local disk.")


def _reads(marker: Path, token: str) -> bool:
  try:
    return marker.read_text() == token
  except OSError:
    return False


# ---- reuse -----------------------------------------------------------------------------------------------------

def _flat(tree, prefix: str = "") -> dict:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def _safe(field: str) -> bool:
  return any(field == s or (s.endswith(".") and field.startswith(s)) for s in SAFE_TO_RESUME)


def config_hash(config_json: dict) -> str:
  return hashlib.sha256(json.dumps(config_json, sort_keys=True).encode()).hexdigest()[:12]


def run_kind(meta: dict) -> str:
  """'target' for target pretraining, else the drafter kind ('dspark', 'dflash', ...)."""
  return meta["drafter"].get("kind", "drafter") if isinstance(meta.get("drafter"), dict) else "target"


def check_reuse(meta: dict, config, kind: str, workdir, step: int, ignore: tuple[str, ...] = ()) -> dict:
  """Compares this run (`kind`, `config`) with the checkpoint metadata `meta` of `step` found in `workdir`.

  Returns the safe changes `{field: [saved, now]}` (empty: the same run); raises `WorkdirError` for another kind
  of run or any other change. `ignore`: fields this run fills in later (so they may differ from the saved ones).
  """
  saved_kind = run_kind(meta)
  saved_config = meta.get("config", {})
  where = f"--workdir {workdir} (step {step}, config hash {config_hash(saved_config)})"
  name = lambda k: "a target pretraining" if k == "target" else f"{'an' if k[0] in 'aeiou' else 'a'} {k}"  # noqa: E731
  if saved_kind != kind:
    if saved_kind == "target":
      raise WorkdirError(f"{where} is a target pretraining workdir. Use a new --workdir for the {kind} drafter "
                         "(to distil from that target, set --config.target.path to it).")
    raise WorkdirError(f"{where} holds {name(saved_kind)} run, and this is {name(kind)} run; use a new --workdir "
                       "or the --config of that run.")
  old, new = _flat(saved_config), _flat(json.loads(config.to_json()))
  changed = {f: [old.get(f), new.get(f)] for f in sorted(old.keys() | new.keys())
             if old.get(f) != new.get(f) and f not in ignore}
  refused = [f for f in changed if not _safe(f)]
  if refused:
    shown = ", ".join(f"{f}: {changed[f][0]!r} → {changed[f][1]!r}" for f in refused[:8])
    more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
    raise WorkdirError(f"{where} holds {name(kind)} run with another config; use a new --workdir or the --config "
                       f"of that run. Changed: {shown}{more}. Only {', '.join(SAFE_TO_RESUME)} may change on resume.")
  return changed


def resume_entry(changes: dict, from_step: int, provenance: dict | None) -> dict:
  """One entry of `meta["resumes"]`: where, by which command, with which (safe) changes."""
  return {"from_step": from_step, **(provenance or {}), "changes": changes}


def describe_changes(changes: dict) -> str:
  return ", ".join(f"{f} {a!r} → {b!r}" for f, (a, b) in changes.items())
