"""Writing safetensors shards (+ index), and the error type every checkpoint reader raises.

Reading lives in dsv4.io.native_checkpoint (lazy, by slice, with FP8/FP4 dequantisation).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import ml_dtypes  # noqa: F401  (registers bfloat16/float8 with numpy so safetensors can return them)
import numpy as np
from safetensors.numpy import save_file


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


@contextlib.contextmanager
def written_whole(path: str | os.PathLike, overwrite: bool = False):
  """Yields a temporary sibling folder of `path` to write into; on success it replaces `path` in one rename, on
  any failure it is removed, so an interrupted export never leaves `path` half-written."""
  out = Path(path)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out}: exists; pass overwrite=True (or --overwrite) to replace it.")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
  try:
    yield tmp
    if out.exists():
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp, ignore_errors=True)
