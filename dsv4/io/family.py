"""The one family switch: which model a config builds, and which loader a checkpoint needs.

A family is found from a transformers `config.json` `model_type` (loading) or from a built config's `family`
(building, counting). Everything downstream talks to the result through the target interface
(dsv4.model.target); nothing else asks which family a target is, except the V4-only drafter paths, which check
`config.family` once where they validate their configuration.

  deepseek_v4            dsv4.model.Transformer       dsv4.io.hf (V4 and DeepSeek-native names)
  llama, qwen2, qwen3    dsv4.model.DenseTransformer  dsv4.io.dense_hf (transformers' names)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flax import nnx

from dsv4.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  model_types: tuple[str, ...]
  config_from_hf: Callable[..., Any]                    # (config.json dict, where, **overrides) -> config
  config_from_mapping: Callable[..., Any]               # (our own to_dict() output, where) -> config
  build: Callable[[Any, int], nnx.Module]               # (config, seed) -> randomly initialised model
  load_dir: Callable[..., nnx.Module]                   # (path, **config_overrides) -> model
  count_params: Callable[[nnx.Module], dict]            # built (real or abstract) model -> counts


def _v4_config(d, where, **overrides):
  from dsv4.io.hf_config import from_hf_dict
  return from_hf_dict(d, where, **overrides)


def _dense_config(d, where, **overrides):
  from dsv4.model.dense_config import dense_config_from_hf
  return dense_config_from_hf(d, where, **overrides)


def _v4_mapping(values, where):
  from dsv4.model.config import ModelConfig
  return ModelConfig.from_mapping(values, where)


def _dense_mapping(values, where):
  from dsv4.model.dense_config import DenseConfig
  return DenseConfig.from_mapping(values, where)


def _v4_build(cfg, seed: int):
  from dsv4.model.transformer import Transformer
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def _v4_load(path, **overrides):
  from dsv4.io.hf import from_pretrained
  return from_pretrained(path, **overrides)


def _v4_count(model):
  from dsv4.model.param_count import count_module
  return count_module(model, model.config)


def _dense_build(cfg, seed: int):
  from dsv4.model.dense import DenseTransformer
  return DenseTransformer(cfg, rngs=nnx.Rngs(seed))


def _dense_load(path, **overrides):
  from dsv4.io.dense_hf import load_dense_dir
  return load_dense_dir(path, **overrides)


def _dense_count(model):
  from dsv4.model.dense_count import count_dense
  return count_dense(model)


FAMILIES = (
    Family("deepseek_v4", ("deepseek_v4",), _v4_config, _v4_mapping, _v4_build, _v4_load, _v4_count),
    Family("dense", ("llama", "qwen2", "qwen3"), _dense_config, _dense_mapping, _dense_build, _dense_load,
           _dense_count),
)
MODEL_TYPES = tuple(t for f in FAMILIES for t in f.model_types)


def family_for_model_type(model_type: str | None, where: str = "config.json") -> Family:
  """The family loading a config.json of this `model_type` (absent: deepseek_v4, as our own V4 exports of old)."""
  model_type = model_type or "deepseek_v4"
  for family in FAMILIES:
    if model_type in family.model_types:
      return family
  raise ConfigError(f"{where}: `model_type` is {model_type!r}; dsv4 loads {', '.join(MODEL_TYPES)}.")


def family_named(name: str, where: str = "config") -> Family:
  for family in FAMILIES:
    if family.name == name:
      return family
  raise ConfigError(f"{where}: no target family {name!r}; known: {[f.name for f in FAMILIES]}.")


def family_of(config) -> Family:
  """The family of a built config (its `family` class attribute)."""
  return family_named(getattr(config, "family", None), type(config).__name__)


def config_from_mapping(values, where: str = "model config"):
  """A config from our own serialised form (`to_dict()`, plus `family` for any family but deepseek_v4, whose
  files predate the key)."""
  values = dict(values)
  return family_named(values.pop("family", "deepseek_v4"), where).config_from_mapping(values, where)


def config_to_mapping(config) -> dict:
  """`config.to_dict()`, with `family` recorded unless it is deepseek_v4 (so V4 files stay as they were)."""
  d = config.to_dict()
  return d if config.family == "deepseek_v4" else {"family": config.family, **d}


def build_model(config, seed: int = 0) -> nnx.Module:
  """A randomly initialised target of the config's family."""
  return family_of(config).build(config, seed)


def read_config(path: str | os.PathLike, **config_overrides):
  """The config of a transformers-format directory, of its family, without reading weights."""
  from dsv4.io.dense_hf import read_hf_config
  d = read_hf_config(path)
  where = str(Path(path) / "config.json")
  return family_for_model_type(d.get("model_type"), where).config_from_hf(d, where, **config_overrides)


def from_pretrained(path: str | os.PathLike, **config_overrides) -> nnx.Module:
  """A target from a transformers-format directory, by its config.json `model_type`; a `.gguf` file (or a
  name the GGUF reader resolves, e.g. an installed model) goes to dsv4.io.gguf."""
  p = Path(path)
  if not p.is_dir():
    if p.suffix == ".gguf" or not p.exists():
      reader = _gguf_reader()
      if reader is not None:
        return reader(path, **config_overrides)
    if p.exists():
      raise ConfigError(f"{p}: not a directory; dsv4.from_pretrained takes a model directory (config.json + "
                        "*.safetensors) or a .gguf file.")
  from dsv4.io.dense_hf import read_hf_config
  d = read_hf_config(p)
  return family_for_model_type(d.get("model_type"), str(p / "config.json")).load_dir(p, **config_overrides)


def _gguf_reader():
  """`dsv4.io.gguf.from_pretrained` (path of a .gguf file or an installed model's name), when present."""
  import importlib.util
  if importlib.util.find_spec("dsv4.io.gguf") is None:
    return None
  from dsv4.io import gguf
  return getattr(gguf, "from_pretrained", None)


def count_params(target) -> dict:
  """Parameter counts of a built (real or abstract) target, by its family's grouping: at least `total_params`,
  `active_params` and `breakdown`."""
  return family_of(target.config).count_params(target)
