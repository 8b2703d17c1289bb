"""ml_collections config files: loading `path/to/file.py[:variant]`, and the model section ↔ ModelConfig.

A config file defines `get_config(arg=None) -> ConfigDict`; `arg` is the text after the colon (a variant
name such as `bf16`), or None. Target configs keep every ModelConfig field under `config.model`, so any of
them can be overridden on the command line (`--config.model.num_hidden_layers=4`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import sys

import ml_collections

from dsv4.errors import ConfigError
from dsv4.model.config import ModelConfig


def split_spec(spec: str) -> tuple[str, str | None]:
  """`a/b.py:variant` → (`a/b.py`, `variant`); `a/b.py` → (`a/b.py`, None)."""
  path, sep, variant = spec.rpartition(":")
  if not sep or not path.endswith(".py"):  # no colon, or a colon inside the path itself
    return spec, None
  return path, variant or None


def _load_file(path: str):
  """The config file at `path`, executed as a module of its own (no folder is put on sys.path)."""
  name = "_dsv4_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[name] = module  # dataclasses and pickling look modules up by name
  try:
    module_spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def sibling(config_file: str, stem: str):
  """The module `stem`.py beside `config_file`, for config files that share a table (configs/drafter/*.py read
  drafter_scales.py): `sibling(__file__, "drafter_scales").config_for`."""
  return _load_file(os.path.join(os.path.dirname(os.path.abspath(config_file)), stem + ".py"))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Imports the config file named by `spec` (`file.py` or `file.py:variant`) and returns its get_config(...)."""
  path, variant = split_spec(spec)
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} does not exist (from spec {spec!r}); give a path to a .py file "
                      "defining get_config(arg=None), e.g. configs/target/tiny.py.")
  module = _load_file(path)
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path!r} defines no get_config(arg=None) function.")
  cfg = get_config() if variant is None else get_config(variant)
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config({variant!r}) returned {type(cfg).__name__}, not a ConfigDict.")
  return cfg


def _plain(value):
  """ConfigDict/list values → dicts/tuples, recursively, as ModelConfig expects."""
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return tuple(_plain(v) for v in value)
  return value


def model_config(cfg: ml_collections.ConfigDict, where: str = "config.model") -> ModelConfig:
  """The validated ModelConfig of `cfg.model` (a whole config) — errors name the field."""
  if "model" not in cfg:
    raise ConfigError(f"{where}: the config has no `model` section; target configs keep ModelConfig fields there.")
  return ModelConfig.from_mapping(_plain(cfg.model), where=where)


def model_section(**fields) -> ml_collections.ConfigDict:
  """Every ModelConfig field (defaults overridden by `fields`; `yarn` may be a dict) as a ConfigDict, validated.

  Listing all fields makes each one overridable from the command line; `yarn` becomes a nested ConfigDict.
  """
  d = dataclasses.asdict(ModelConfig.from_mapping(fields, where="model_section"))
  d["compress_ratios"] = tuple(d["compress_ratios"])
  return ml_collections.ConfigDict(d)


def variant_names(arg: str | None) -> tuple[str, ...]:
  """`bf16,foo` → ('bf16', 'foo'); None or '' → ()."""
  return tuple(v for v in (arg or "").split(",") if v)


def apply_variants(model: ml_collections.ConfigDict, arg: str | None, where: str) -> None:
  """Variants shared by target configs (comma-separated): `bf16` = bfloat16 params and compute."""
  for v in variant_names(arg):
    if v == "bf16":
      model.dtype = model.param_dtype = "bfloat16"
    else:
      raise ConfigError(f"{where}: unknown variant {v!r}; known variants: ('bf16',).")
