"""A directory of safetensors shards (single file or `model.safetensors.index.json`), read lazily.

Every error names the file. Reading a tensor maps just that tensor (safetensors is mmap-based), so peak
host memory stays near the largest tensor being converted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy so safetensors can return them)
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


class CheckpointError(ValueError):
  """A checkpoint on disk is missing, corrupt or does not match the model; the message says which file/tensor."""


class SafetensorsDir:

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    if not self.path.is_dir():
      raise CheckpointError(f"{self.path}: not a directory; expected a model directory with config.json and "
                            "*.safetensors (as save_pretrained writes it).")
    index = self.path / "model.safetensors.index.json"
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(f"{index}: not a valid safetensors index ({e}).") from e
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(p.name for p in self.path.glob("*.safetensors"))
      weight_map = None
    if not files:
      raise CheckpointError(f"{self.path}: no *.safetensors files found.")
    self._where: dict[str, tuple[str, str]] = {}
    for fname in files:
      fpath = self.path / fname
      if not fpath.exists():
        raise CheckpointError(f"{fpath}: listed in the index but missing.")
      try:
        with safe_open(fpath, "np") as f:
          keys = list(f.keys())
      except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{fpath}: cannot read safetensors header ({e}); the file is truncated or corrupt.") \
            from e
      for k in keys:
        if weight_map is not None and weight_map.get(k) != fname:
          continue
        self._where[k] = (fname, k)

  def keys(self):
    return list(self._where)

  def shape(self, key: str) -> tuple[int, ...]:
    fname, k = self._where[key]
    with safe_open(self.path / fname, "np") as f:
      return tuple(f.get_slice(k).get_shape())

  def get(self, key: str) -> np.ndarray:
    fname, k = self._where[key]
    try:
      with safe_open(self.path / fname, "np") as f:
        return f.get_tensor(k)
    except Exception as e:
      raise CheckpointError(f"{self.path / fname}: cannot read tensor {k!r} ({e}); the file is truncated or "
                            "corrupt.") from e


def write_shards(tensors: dict[str, np.ndarray], out_dir: Path, max_shard_bytes: int = 4 << 30) -> list[str]:
  """Writes tensors as safetensors shards (+ index when more than one), in the given order."""
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if shards[-1] and size + arr.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = np.ascontiguousarray(arr)
    size += arr.nbytes
  if len(shards) == 1:
    names = ["model.safetensors"]
  else:
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
  for shard, fname in zip(shards, names, strict=True):
    save_file(shard, out_dir / fname, metadata={"format": "pt"})
  if len(shards) > 1:
    weight_map = {k: fname for shard, fname in zip(shards, names, strict=True) for k in shard}
    total = sum(a.nbytes for a in tensors.values())
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
  return names
