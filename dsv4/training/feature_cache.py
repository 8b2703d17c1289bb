"""The offline feature cache: the frozen target's features of a fixed sequence of packed batches, on disk.

Per token it stores the row fields (4 × int32) and, in `dtype` (bf16 by default), the final-normed hidden state
[D], the taps [L, D] and, for MTP drafters, the mHC streams [N, D]. Target logits are never stored: the step
rebuilds them through the frozen head at the supervised slots only. One `.npy` file per field holds every row
([rows, T, ...]; bf16 is stored as its uint16 bits, the dtype is in the manifest) and is memory-mapped on read.

A cache is written into a temporary sibling and renamed into place when complete, the manifest last, so a
directory with a manifest is a finished cache and an interrupted build leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
import ml_dtypes
import numpy as np

from dsv4 import errors
from dsv4.training.distill import FEATURE_FIELDS, ROW_FIELDS
from dsv4.training.progress import progress

MANIFEST = "manifest.json"
_STORED = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}


def bytes_per_token(hidden: int, n_taps: int, feature_names: tuple[str, ...], dtype: str, streams: int = 0) -> dict:
  """Bytes per training token that each feature mode reads from disk: online reads the row fields only."""
  width = np.dtype(_STORED[dtype]).itemsize
  floats = hidden + (n_taps * hidden if "taps" in feature_names else 0)
  floats += streams * hidden if "streams" in feature_names else 0
  rows = 4 * len(ROW_FIELDS)
  return {"online": rows, "offline": rows + floats * width}


def build(directory: str | Path, batches: Iterator[dict], n_batches: int, features_fn: Callable[[dict], dict],
          dtype: str = "bfloat16", meta: dict | None = None, log=print) -> dict:
  """Writes `n_batches` batches and `features_fn(batch)` ({"hidden", "taps"?, "streams"?} arrays) to DIRECTORY."""
  directory = Path(directory).absolute()
  if (directory / MANIFEST).exists():
    raise errors.DataError(f"{directory}: a finished cache is already there; delete it to rebuild.")
  if dtype not in _STORED:
    raise errors.DataError(f"feature cache dtype {dtype!r}: must be one of {sorted(_STORED)}.")
  tmp = directory.with_name(directory.name + f".tmp-{os.getpid()}")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  files, shapes = {}, {}
  try:
    bar = progress(n_batches, desc="feature cache")
    for i in range(n_batches):
      batch = next(batches)
      arrays = {**{k: np.asarray(batch[k], np.int32) for k in ROW_FIELDS},
                **{k: np.asarray(jax.device_get(v)) for k, v in features_fn(batch).items()}}
      if i == 0:
        for k, v in arrays.items():
          if k not in ROW_FIELDS and k not in FEATURE_FIELDS:
            raise errors.DataError(f"features_fn returned an unknown field {k!r}.")
          stored = np.int32 if k in ROW_FIELDS else _STORED[dtype]
          shapes[k] = (n_batches * v.shape[0],) + v.shape[1:]
          files[k] = np.lib.format.open_memmap(tmp / f"{k}.npy", mode="w+", dtype=stored, shape=shapes[k])
      for k, v in arrays.items():
        rows = v.shape[0]
        if k not in ROW_FIELDS:
          v = v.astype(ml_dtypes.bfloat16).view(np.uint16) if dtype == "bfloat16" else v.astype(_STORED[dtype])
        files[k][i * rows:(i + 1) * rows] = v
      bar.update(1)
    bar.close()
    for f in files.values():
      f.flush()
    del files
    manifest = {"batches": n_batches, "batch_size": shapes["tokens"][0] // n_batches, "dtype": dtype,
                "shapes": {k: list(s) for k, s in shapes.items()}, **(meta or {})}
    tokens = int(np.count_nonzero(np.load(tmp / "segment_ids.npy", mmap_mode="r")))
    manifest["tokens"] = tokens
    manifest["bytes"] = sum(p.stat().st_size for p in tmp.iterdir())
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if directory.exists():
      shutil.rmtree(directory)  # an unfinished leftover (no manifest)
    os.replace(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"feature cache: {n_batches} batches, {manifest['bytes'] / 2**20:.1f} MiB at {directory}")
  return manifest


class FeatureCache:
  """Batches of a finished cache by index (memory-mapped)."""

  def __init__(self, directory: str | Path):
    self.directory = Path(directory)
    path = self.directory / MANIFEST
    if not path.is_file():
      raise errors.DataError(f"{self.directory}: no finished feature cache ({MANIFEST} missing).")
    self.manifest = json.loads(path.read_text())
    self.arrays = {k: np.load(self.directory / f"{k}.npy", mmap_mode="r") for k in self.manifest["shapes"]}
    self.n_batches, self.batch_size = self.manifest["batches"], self.manifest["batch_size"]

  def batch(self, i: int, rows: slice | None = None) -> dict:
    """Batch i (mod the cache length); `rows` selects this process's rows of it."""
    i %= self.n_batches
    sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
    out = {}
    for k, a in self.arrays.items():
      v = np.asarray(a[sl][rows if rows is not None else slice(None)])
      if k not in ROW_FIELDS and self.manifest["dtype"] == "bfloat16":
        v = v.view(ml_dtypes.bfloat16)
      out[k] = v
    return out
