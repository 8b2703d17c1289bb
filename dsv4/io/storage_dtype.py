"""The dtype a checkpoint stores its weights in, so that a conversion writes them back in it.

Loading widens the weights to the model's parameter dtype (float32 for the shipped configs): a bf16 export converted
to an orbax checkpoint and back would otherwise come out in float32, twice the size, with no gain. The storage dtype
of a source is the floating dtype holding most of its bytes (routing biases and the like may stay float32 beside
bf16 weights); it is given to the parameters (`nnx.Param`) only, as export_target.py does, so the rest keeps its own
dtype. Quantised sources (FP8/FP4) have no such dtype to keep: they are dequantised.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

_SAFETENSORS_FLOATS = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
                       "BF16": np.dtype(ml_dtypes.bfloat16)}
_QUANTISED = ("F8_E4M3", "F8_E5M2", "F8_E8M0", "F4")


def _majority(bytes_by_dtype: Counter) -> np.dtype | None:
  return max(bytes_by_dtype, key=bytes_by_dtype.get) if bytes_by_dtype else None


def safetensors_dtype(directory: str | Path) -> np.dtype | None:
  """The floating dtype holding most weight bytes of a transformers-format directory (None: none, or quantised)."""
  counts: Counter = Counter()
  for path in Path(directory).glob("*.safetensors"):
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
    for name, entry in header.items():
      if name == "__metadata__":
        continue
      if entry["dtype"] in _QUANTISED:
        return None
      if entry["dtype"] in _SAFETENSORS_FLOATS:
        begin, end = entry["data_offsets"]
        counts[_SAFETENSORS_FLOATS[entry["dtype"]]] += end - begin
  return _majority(counts)


def orbax_dtype(state_dir: str | Path) -> np.dtype | None:
  """The floating dtype holding most bytes of an orbax checkpoint's arrays (None: no floating arrays)."""
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(Path(state_dir).absolute()).item_metadata.tree
  counts: Counter = Counter()
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "dtype") and hasattr(x, "shape")):
    dtype = np.dtype(leaf.dtype)
    if jnp.issubdtype(dtype, jnp.floating):
      counts[dtype] += int(np.prod(leaf.shape)) * dtype.itemsize
  return _majority(counts)


def with_param_dtype(model: nnx.Module, dtype) -> nnx.Module:
  """A copy of `model` whose floating `nnx.Param`s are stored in `dtype`; every other state keeps its dtype."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x  # noqa: E731
  return nnx.merge(graphdef, jax.tree.map(cast, nnx.to_pure_dict(params)), nnx.to_pure_dict(rest))
