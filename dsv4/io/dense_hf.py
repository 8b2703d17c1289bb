"""Dense-family weights under transformers' names: load (from a safetensors directory or any name → array
mapping, e.g. a dequantised GGUF) and save.

Our parameter paths mirror transformers' module names, so the map is mechanical:
  embed                          model.embed_tokens.weight          [V, D] as is
  lm_head                        lm_head.weight                     [V, D] transposed (absent when tied)
  norm.weight                    model.norm.weight
  layers.N.<module>.kernel       model.layers.N.<module>.weight     [out, in] transposed to [in, out]
  layers.N.<module>.bias|weight  model.layers.N.<module>.bias|weight
The tensor set is checked against the config before anything is allocated (missing, unexpected and mis-shaped
tensors in one error). Tensors are read, converted and placed one at a time (streaming), each directly in its
sharding when `shardings` is given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.errors import CheckpointError
from dsv4.io.safetensors_dir import write_shards, written_whole
from dsv4.model.dense import DenseTransformer
from dsv4.model.dense_config import DenseConfig, dense_config_from_hf, dense_config_to_hf

# Tensors some checkpoints carry that the model does not need (recomputed RoPE tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def hf_name(path: tuple) -> tuple[str, bool]:
  """(transformers name, transposed?) of one of our parameter paths."""
  parts = [str(p) for p in path]
  if parts == ["embed"]:
    return "model.embed_tokens.weight", False
  if parts == ["lm_head"]:
    return "lm_head.weight", True
  leaf = parts[-1]
  name = "model." + ".".join(parts[:-1] + ["weight" if leaf == "kernel" else leaf])
  return name, leaf == "kernel"


def abstract_dense(cfg: DenseConfig) -> DenseTransformer:
  return nnx.eval_shape(lambda: DenseTransformer(cfg, rngs=nnx.Rngs(0)))


def expected_tensors(cfg: DenseConfig) -> dict[str, tuple[int, ...]]:
  """transformers name → shape, for every parameter of `DenseTransformer(cfg)`."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract_dense(cfg))):
    name, transposed = hf_name(tuple(path))
    shape = tuple(var.get_value().shape)
    out[name] = shape[::-1] if transposed else shape
  return out


def check_tensors(cfg: DenseConfig, found: Mapping[str, tuple[int, ...]], where: str) -> None:
  expected = expected_tensors(cfg)
  extra_ok = {"lm_head.weight"} if cfg.tie_word_embeddings else set()  # some tied checkpoints store a copy
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(n for n in set(found) - set(expected) - extra_ok if not n.endswith(_IGNORED_SUFFIXES))
  misshaped = sorted(f"{n}: checkpoint {tuple(found[n])} vs model {expected[n]}"
                     for n in set(expected) & set(found) if tuple(found[n]) != expected[n])
  if missing or unexpected or misshaped:
    parts = [f"{where}: tensors do not match the {cfg.model_type} config."]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
      if items:
        parts.append(f"  {len(items)} {title}: " + ", ".join(items[:20]) + (" …" if len(items) > 20 else ""))
    raise CheckpointError("\n".join(parts))


def dense_from_get(cfg: DenseConfig, get: Callable[[str], np.ndarray],
                   shardings: Callable[[tuple, nnx.Variable], jax.sharding.Sharding] | None = None
                   ) -> DenseTransformer:
  """A DenseTransformer whose parameters come from `get(transformers_name)`, one tensor at a time (no random init).

  `shardings(path, abstract_variable)` (e.g. dsv4.parallel.rules.shardings_fn) places each tensor as it is read.
  """
  graphdef, state = nnx.split(abstract_dense(cfg))
  leaves = []
  for path, var in nnx.to_flat_state(state):
    name, transposed = hf_name(tuple(path))
    value = np.asarray(get(name))
    value = value.T if transposed else value
    dtype = var.get_value().dtype
    array = jnp.asarray(value.astype(np.float32) if value.dtype != dtype else value, dtype=dtype)
    if shardings is not None:
      array = jax.device_put(array, shardings(tuple(path), var))
    leaves.append((path, var.replace(value=array)))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def dense_from_hf_tensors(config_dict: Mapping, tensors: Mapping[str, np.ndarray], dtype: str = "float32",
                          where: str = "tensors", shardings=None, **overrides) -> DenseTransformer:
  """A dense model from a transformers-style config dict and tensors under transformers' names and layouts
  ([out, in] projections, q/k rows in transformers' order, i.e. llama.cpp's permutation already undone).

  `dtype` sets the parameter storage and compute dtype ("float32" or "bfloat16"; norms stay float32).
  """
  cfg = dense_config_from_hf(config_dict, where, **{"dtype": dtype, "param_dtype": dtype, **overrides})
  check_tensors(cfg, {n: tuple(np.shape(a)) for n, a in tensors.items()}, where)
  return dense_from_get(cfg, lambda n: tensors[n], shardings)


def read_hf_config(path: str | os.PathLike) -> dict:
  cfg_path = Path(path) / "config.json"
  if not cfg_path.exists():
    raise CheckpointError(f"{cfg_path}: missing; a model directory needs config.json next to its safetensors.")
  try:
    return json.loads(cfg_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e}).") from e


def load_dense_dir(path: str | os.PathLike, shardings=None, **overrides) -> DenseTransformer:
  """A dense model from a transformers directory (config.json + safetensors, sharded or not), read lazily.

  `overrides` set non-architecture fields, e.g. dtype="bfloat16", param_dtype="bfloat16".
  """
  from dsv4.io.native_checkpoint import NativeCheckpoint
  cfg = dense_config_from_hf(read_hf_config(path), str(Path(path) / "config.json"), **overrides)
  ckpt = NativeCheckpoint(path)
  check_tensors(cfg, {k: ckpt.shape(k) for k in ckpt.keys()}, str(path))
  return dense_from_get(cfg, ckpt.get, shardings)


def dense_hf_tensors(model: DenseTransformer) -> dict[str, np.ndarray]:
  """Every parameter under its transformers name and layout."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    name, transposed = hf_name(tuple(path))
    value = np.asarray(var.get_value())
    out[name] = np.ascontiguousarray(value.T if transposed else value)
  return out


def save_dense_pretrained(model: DenseTransformer, path: str | os.PathLike, overwrite: bool = False) -> Path:
  """config.json + safetensors that transformers' *ForCausalLM loads; written to a temporary sibling first."""
  with written_whole(path, overwrite) as tmp:
    write_shards(dense_hf_tensors(model), tmp)
    (tmp / "config.json").write_text(json.dumps(dense_config_to_hf(model.config), indent=2))
  return Path(path)
