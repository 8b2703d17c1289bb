"""The frozen target a drafter is distilled from, named by a path or trained on demand.

`config.target` of a drafter config:
  path      a directory holding a target: an export (config.json + *.safetensors, e.g. assets/targets/small),
            a dsv4 model checkpoint (dsv4_config.json + state/), or a `train_target.py` workdir (checkpoints/)
  config    a target config file (e.g. configs/target/tiny.py) used when `path` has no finished checkpoint yet:
            the target is then trained into `path` first with `train_steps` steps (0 = the config's own), saying so

`describe` gives the facts recorded in a drafter checkpoint so `dsv4.load_drafter` can find the target again
and refuse one made for something else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dsv4.configs import load_config
from dsv4.io.safetensors_dir import CheckpointError
from dsv4.model.config import ConfigError, ModelConfig
from dsv4.model.transformer import Transformer


def kind_of(path: Path) -> str | None:
  """'export' | 'model' | 'workdir' | None (nothing finished there)."""
  if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
    return "export"
  if (path / "dsv4_config.json").is_file():
    return "model"
  ckpts = path / "checkpoints"
  if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
    return "workdir"
  return None


def load_target(path: str | Path) -> Transformer:
  path = Path(path)
  kind = kind_of(path) if path.is_dir() else None
  if kind == "export":
    from dsv4.model.family import from_pretrained
    return from_pretrained(path)
  if kind == "model":
    from dsv4.io.checkpoint import load_model
    return load_model(path)
  if kind == "workdir":
    from dsv4.training.target_export import latest_checkpoint, restore_model
    return restore_model(latest_checkpoint(path))[0]
  raise CheckpointError(f"target path {str(path)!r}: no target there (expected an export with config.json and "
                        "*.safetensors, a dsv4 model checkpoint, or a train_target.py workdir with a finished "
                        "checkpoint). Set config.target.path, or config.target.config to train one.")


def tokenizer_path(path: str | Path) -> Path | None:
  """The target's tokenizer.json, if it ships one (exports do)."""
  p = Path(path) / "tokenizer.json"
  return p if p.is_file() else None


def ensure_target(target_section, log=print) -> Transformer:
  """Loads `target.path`, training it there first from `target.config` when nothing is there yet."""
  path = Path(target_section.path)
  if not target_section.path:
    raise ConfigError("config.target.path: required (a target export, model checkpoint or train_target.py workdir).")
  if (not path.is_dir() or kind_of(path) is None) and target_section.get("config", ""):
    from dsv4.training import pretrain_loop
    config = load_config(target_section.config)
    if target_section.get("train_steps", 0):
      config.train.steps = int(target_section.train_steps)
    log(f"no target at {path}: training one from {target_section.config} ({config.train.steps} steps) first")
    pretrain_loop.run(config, path, provenance={"command": "ensure_target", "target_config": target_section.config})
  return load_target(path)


def config_hash(cfg: ModelConfig) -> str:
  return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def describe(path: str | Path, cfg: ModelConfig) -> dict:
  """What a drafter checkpoint records about its target."""
  return {"path": str(Path(path).absolute()), "config": cfg.to_dict(), "config_hash": config_hash(cfg)}
