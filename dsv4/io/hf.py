"""Load a transformers-format directory (config.json + safetensors) into our model, and write one back.

`from_pretrained` accepts the layout `save_pretrained` writes and DeepSeek's native names (dsv4.io.names).
Before anything is allocated, the checkpoint's tensor set is checked against the model: missing,
unexpected and mis-shaped tensors are reported together in one error. MTP weights (`mtp.K.*`, which
transformers does not keep) are loaded when present; when absent the model is built without MTP.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.errors import CheckpointError
from dsv4.io import names as names_lib
from dsv4.io.hf_config import from_hf_dict, to_hf_dict
from dsv4.io.native_checkpoint import NativeCheckpoint
from dsv4.io.safetensors_dir import write_shards, written_whole
from dsv4.model.config import ModelConfig
from dsv4.model.transformer import Transformer

log = logging.getLogger(__name__)


def read_config(path: str | os.PathLike, **overrides) -> ModelConfig:
  cfg_path = Path(path) / "config.json"
  if not cfg_path.exists():
    raise CheckpointError(f"{cfg_path}: missing; a model directory needs config.json next to its safetensors.")
  try:
    d = json.loads(cfg_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: not valid JSON ({e}).") from e
  return from_hf_dict(d, str(cfg_path), **overrides)


def check_tensors(specs: list[names_lib.Spec], found: dict[str, tuple[int, ...]], where: str) -> None:
  """One error listing every missing, unexpected and mis-shaped tensor."""
  expected = {n: s for spec in specs for n, s in zip(spec.names, spec.native_shapes, strict=True)}
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  misshaped = sorted(f"{n}: checkpoint {found[n]} vs model {expected[n]}" for n in set(expected) & set(found)
                     if tuple(found[n]) != tuple(expected[n]))
  if missing or unexpected or misshaped:
    parts = [f"{where}: checkpoint does not match the model config."]
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
      if items:
        parts.append(f"  {len(items)} {title}: " + ", ".join(items))
    raise CheckpointError("\n".join(parts))


def model_from_native(cfg: ModelConfig, get, rngs_seed: int = 0) -> Transformer:
  """Builds a Transformer whose parameters come from `get(native_name) -> np.ndarray` (no random init)."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(rngs_seed)))
  graphdef, state = nnx.split(abstract)
  by_path = {spec.path: spec for spec in names_lib.specs(cfg)}
  leaves = []
  for path, var in nnx.to_flat_state(state):
    spec = by_path.get(tuple(path))
    if spec is None:
      raise AssertionError(f"no checkpoint name for parameter {path}")  # names.specs must cover the model
    value = spec.to_ours([get(n) for n in spec.names])
    leaves.append((path, var.replace(value=jnp.asarray(value, dtype=var.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def config_for(path, native_names, **overrides) -> ModelConfig:
  """config.json, with the MTP depth the checkpoint actually holds (transformers' exports carry none)."""
  n_mtp = len({m.group(1) for n in native_names if (m := re.match(r"mtp\.(\d+)\.", n))})
  cfg = read_config(path, **overrides)
  if n_mtp != cfg.num_nextn_predict_layers:
    if n_mtp:
      log.warning("%s: config says %d MTP modules, checkpoint holds %d; using %d", path,
                  cfg.num_nextn_predict_layers, n_mtp, n_mtp)
    cfg = cfg.replace(num_nextn_predict_layers=n_mtp)
  return cfg


def from_pretrained(path: str | os.PathLike, **config_overrides) -> Transformer:
  """A dsv4 Transformer with the weights of a transformers-format (or DeepSeek-native) directory.

  `config_overrides` set ModelConfig fields that are not architecture, e.g. dtype="bfloat16", moe_impl="dense".
  """
  ckpt = NativeCheckpoint(path)  # also reads FP8/FP4 + scales, which safetensors' numpy reader cannot return
  native = {names_lib.normalize(k): k for k in ckpt.keys()}
  cfg = config_for(path, native, **config_overrides)
  specs = names_lib.specs(cfg)
  check_tensors(specs, {n: ckpt.shape(k) for n, k in native.items()}, str(path))
  return model_from_native(cfg, lambda n: ckpt.get(native[n]))


def native_tensors(model: Transformer) -> dict[str, np.ndarray]:
  """Every tensor of the model under its native name, in the order of names.specs."""
  state = dict((tuple(p), v) for p, v in nnx.to_flat_state(nnx.state(model)))
  out = {}
  for spec in names_lib.specs(model.config):
    arrays = spec.to_native(np.asarray(state[spec.path][...]))
    out.update(zip(spec.names, arrays, strict=True))
  return out


def save_pretrained(model: Transformer, path: str | os.PathLike, overwrite: bool = False) -> Path:
  """Writes config.json + safetensors in the layout transformers' save_pretrained uses.

  Written into a temporary sibling and renamed into place, so an interrupted export leaves nothing half-written.
  """
  with written_whole(path, overwrite) as tmp:
    tensors = {names_lib.hf_saved_name(n): a for n, a in native_tensors(model).items()}
    write_shards(tensors, tmp)
    (tmp / "config.json").write_text(json.dumps(to_hf_dict(model.config), indent=2))
  return Path(path)
