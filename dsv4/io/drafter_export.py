"""A trained drafter exported for shipping: the parameters of one train_drafter.py checkpoint, without the optimizer.

The export is a checkpoint step directory that `dsv4.load_drafter` reads as it reads the trainer's own (`meta/`,
a JSON item, and `state/`, an orbax PyTree with `params`, `rest` and `step`), so the same loader, target checks and
config parsing apply; only the Adam moments and the data-loader state are left out. Floating-point parameters are
stored in `dtype` (bfloat16 by default: half the bytes, and the drafter casts to its compute dtype on use).

`provenance.json` beside them records where they came from: the source checkpoint, its step, the data it was
trained on, the training time, the held-out τ_prob the trainer measured at that step (a T = 1 quantity, for
block_size γ), and the commits that trained and exported it.
The recorded target path becomes repository-relative when it points into a checkout's assets/ folder, so the
export does not name the machine it was made on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dsv4.errors import CheckpointError
from dsv4.io.drafter_checkpoint import checkpoint_dir
from dsv4.io.target import describe, shipped_path


def _relative_run(src: Path) -> str:
  """The source checkpoint from its run folder on (runs/NAME/checkpoints/STEP), not the machine's absolute path."""
  parts = src.parts
  return str(Path(*parts[-4:])) if len(parts) >= 4 and parts[-2] == "checkpoints" else str(src)


def _cast(tree, dtype):
  def cast(x):
    x = np.asarray(x)
    return np.asarray(jnp.asarray(x, dtype)) if np.issubdtype(x.dtype, np.floating) else x
  return jax.tree.map(cast, tree)


def export_drafter(workdir: str | Path, out: str | Path, *, dtype=jnp.bfloat16, provenance: dict | None = None,
                   overwrite: bool = False) -> dict:
  """Writes the latest checkpoint of `workdir` (or the step directory itself) to `out`; returns the provenance."""
  src = checkpoint_dir(Path(workdir).absolute())  # orbax restores absolute paths only
  out = Path(out)
  if out.exists():
    if not overwrite:
      raise FileExistsError(f"{out} exists; pass overwrite=True (scripts: --overwrite) to replace it.")
    shutil.rmtree(out)
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    meta = ckptr.restore(src / "meta")
  if "drafter" not in meta or "target" not in meta:
    raise CheckpointError(f"{src}: not a drafter checkpoint (its metadata has no drafter config or target).")
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(src / "state")
  state = {"params": _cast(saved["params"], dtype), "rest": saved["rest"], "step": saved["step"]}
  step = int(saved["step"])
  data = meta.get("config", {}).get("data", {})
  record = {
      "source": _relative_run(src), "step": step, "planned_steps": meta.get("config", {}).get("train", {}).get("steps"),
      "block_size": meta["drafter"]["block_size"], "kind": meta["drafter"]["kind"],
      "tau_prob": meta.get("tau_prob"), "tau_prob_init": meta.get("tau_prob_init"),
      "tau_prob_note": "held-out τ_prob at this step, measured by the trainer: a T = 1 quantity for block_size γ",
      "loss": meta.get("loss"), "tokens_seen": meta.get("tokens_seen"), "train_seconds": meta.get("seconds"),
      "data": {k: data.get(k) for k in ("source", "tokenizer", "seq_len", "train_split", "val_split") if k in data},
      "dtype": jnp.dtype(dtype).name,
      "trained_by": {k: meta.get(k) for k in ("command", "commit", "commit_dirty")},
      "exported_by": provenance or {},
  }
  meta = {**meta, "target": {**meta["target"], "path": shipped_path(meta["target"]["path"])}, "export": record}
  _write(out, meta, state)
  (out / "provenance.json").write_text(json.dumps(record, indent=2) + "\n")
  return record


def _write(out: Path, meta: dict, state: dict) -> None:
  out.mkdir(parents=True)
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    ckptr.save((out / "meta").absolute(), meta)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save((out / "state").absolute(), state)


def save_drafter(out: str | Path, drafter, target_path: str | Path, target_cfg, *, step: int = 0,
                 meta: dict | None = None) -> Path:
  """Writes a drafter module built in memory (e.g. `build_drafter(...)`) as a checkpoint `dsv4.load_drafter`
  reads, recorded as made for the target at `target_path` with config `target_cfg`; `meta` adds fields (such as
  "tau_prob")."""
  from flax import nnx

  _, params, rest = nnx.split(drafter, nnx.Param, ...)
  state = {"params": nnx.to_pure_dict(params), "rest": nnx.to_pure_dict(rest), "step": np.int64(step)}
  _write(Path(out), {"drafter": drafter.config.to_dict(), "target": describe(target_path, target_cfg),
                     **(meta or {})}, jax.device_get(state))
  return Path(out)
