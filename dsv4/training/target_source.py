"""The frozen target a drafter is distilled from, named by a path or trained on demand.

`config.target` of a drafter config:
  path      a directory holding a target (any format of dsv4.io.target: an export, a dsv4 model checkpoint or a
            `train_target.py` workdir)
  config    a target config file (e.g. configs/target/tiny.py) used when `path` has no finished target yet: the
            target is then trained into `path` first with `train_steps` steps (0 = the config's own), saying so

Loading itself is dsv4.io.target's (one loader for every consumer); this module adds only the training on demand.
"""

from __future__ import annotations

from pathlib import Path

from dsv4.configs import load_config, model_config
from dsv4.errors import ConfigError
from dsv4.io.target import load_target, read_target_config, target_format
from dsv4.model.config import ModelConfig
from dsv4.model.transformer import Transformer


def _to_train(target_section) -> bool:
  path = Path(target_section.path)
  return (not path.is_dir() or target_format(path) is None) and bool(target_section.get("config", ""))


def target_config(target_section) -> ModelConfig:
  """The target's ModelConfig without loading (or training) it: read from `target.path`, or from `target.config`
  when the target is still to be trained there. Raises TargetError when neither names a target."""
  if not target_section.path:
    raise ConfigError("config.target.path: required (a target export, model checkpoint or train_target.py workdir).")
  if _to_train(target_section):
    return model_config(load_config(target_section.config))
  return read_target_config(target_section.path)[0]


def ensure_target(target_section, log=print) -> Transformer:
  """Loads `target.path`, training it there first from `target.config` when nothing is there yet."""
  path = Path(target_section.path)
  if not target_section.path:
    raise ConfigError("config.target.path: required (a target export, model checkpoint or train_target.py workdir).")
  if _to_train(target_section):
    from dsv4.training import pretrain_loop
    config = load_config(target_section.config)
    if target_section.get("train_steps", 0):
      config.train.steps = int(target_section.train_steps)
    log(f"no target at {path}: training one from {target_section.config} ({config.train.steps} steps) first")
    pretrain_loop.run(config, path, provenance={"command": "ensure_target", "target_config": target_section.config})
  return load_target(path)
