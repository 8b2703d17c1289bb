"""Our own model checkpoint: an orbax PyTree checkpoint of the NNX state plus `dsv4_config.json`.

Layout: DIR/state (orbax, written atomically by orbax's temp-dir-then-rename) and DIR/dsv4_config.json (the
config's `to_dict()`, plus its `family` for any target family but DeepSeek-V4; dsv4.io.family).
Restoring goes through the abstract model, so arrays can be restored straight into target shardings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from dsv4.errors import CheckpointError
from dsv4.io.family import build_model, config_from_mapping, config_to_mapping
from dsv4.model.config import ModelConfig
from dsv4.model.dense import DenseTransformer
from dsv4.model.dense_config import DenseConfig
from dsv4.model.transformer import Transformer

CONFIG_FILE = "dsv4_config.json"


def save_model(model: Transformer | DenseTransformer, directory: str | os.PathLike, overwrite: bool = False) -> Path:
  directory = Path(directory).absolute()
  if directory.exists() and not overwrite:
    raise FileExistsError(f"{directory}: exists; pass overwrite=True (or --overwrite) to replace it.")
  directory.mkdir(parents=True, exist_ok=True)
  state = nnx.to_pure_dict(nnx.state(model))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / "state", state, force=overwrite)
    ckptr.wait_until_finished()
  # The config goes last: a directory with a config is a complete checkpoint.
  tmp = directory / (CONFIG_FILE + ".tmp")
  tmp.write_text(json.dumps(config_to_mapping(model.config), indent=2))
  os.replace(tmp, directory / CONFIG_FILE)
  return directory


def read_model_config(directory: str | os.PathLike, **overrides) -> ModelConfig | DenseConfig:
  """The saved config, of the family it records (dsv4.io.family)."""
  path = Path(directory) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(f"{path}: missing; not a dsv4 model checkpoint (or its save did not finish).")
  return config_from_mapping({**json.loads(path.read_text()), **overrides}, where=str(path))


def load_model(directory: str | os.PathLike, shardings=None, **overrides) -> Transformer | DenseTransformer:
  """Restores a model saved by save_model. `shardings`: optional pytree of shardings matching the state."""
  directory = Path(directory).absolute()
  cfg = read_model_config(directory, **overrides)
  abstract = nnx.eval_shape(lambda: build_model(cfg))
  graphdef, abstract_state = nnx.split(abstract)
  target = nnx.to_pure_dict(abstract_state)
  if shardings is not None:
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), target, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    try:
      restored = ckptr.restore(directory / "state", target)
    except Exception as e:
      raise CheckpointError(f"{directory / 'state'}: cannot restore ({e}).") from e
  nnx.replace_by_pure_dict(abstract_state, restored)
  return nnx.merge(graphdef, abstract_state)
