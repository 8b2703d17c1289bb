"""Streaming, sharded load: every parameter is born in its target sharding, each device's shard read from disk alone.

`load_sharded` builds the model abstractly (`nnx.eval_shape`, nothing allocated) and makes each parameter with
`jax.make_array_from_callback`: the callback maps the shard's index (our layout) to the rows/columns of the native
tensor(s) behind it — transposed for [in, out] kernels, only the experts in the shard for stacked experts, only the
groups in the shard for the grouped `o_a_proj` — reads just those through `NativeCheckpoint.read` (memory-mapped,
FP8/FP4 dequantised on the slice with whole scale blocks), and casts to the parameter dtype. Host memory peaks near
one parameter's local shards, never the whole checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, Sharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from dsv4.io import hf
from dsv4.io import names as names_lib
from dsv4.io.native_checkpoint import NativeCheckpoint, slice_bounds
from dsv4.model.transformer import Transformer

log = logging.getLogger(__name__)

ShardingsFn = Callable[[tuple, nnx.Variable], Sharding]


def load_sharded(path: str | os.PathLike, shardings: ShardingsFn | Sharding | nnx.State | dict | None = None, *,
                 progress: bool = False, **config_overrides) -> Transformer:
  """A dsv4 Transformer whose parameters are created directly in their shardings from a checkpoint directory.

  shardings: `fn(path_tuple, abstract_variable) -> Sharding` (the variable carries the logical axis names as
  `out_sharding` metadata), one Sharding for every parameter, or a state/nested dict of Shardings shaped like
  `nnx.state(model)`. Default: replicated on all devices. `config_overrides` as for `dsv4.from_pretrained`.
  """
  ckpt = NativeCheckpoint(path)
  native = {names_lib.normalize(k): k for k in ckpt.keys()}
  cfg = hf.config_for(path, native, **config_overrides)
  specs = names_lib.specs(cfg)
  hf.check_tensors(specs, {n: ckpt.shape(k) for n, k in native.items()}, str(path))
  sharding_of = _sharding_fn(shardings)
  by_path = {spec.path: spec for spec in specs}
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  leaves = []
  for path_, var in tqdm(list(nnx.to_flat_state(state)), desc="loading", disable=not progress):
    spec = by_path[tuple(path_)]
    read_shard = shard_reader(spec, var.shape, lambda name, index: ckpt.read(native[name], index))
    value = jax.make_array_from_callback(var.shape, sharding_of(tuple(path_), var),
                                         _once_per_index(read_shard, var.dtype), dtype=var.dtype)
    leaves.append((path_, var.replace(value=value)))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def _sharding_fn(shardings) -> ShardingsFn:
  if shardings is None:
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), P())
    return lambda path, var: replicated
  if isinstance(shardings, Sharding):
    return lambda path, var: shardings
  if callable(shardings):
    return shardings
  state = nnx.State(shardings) if isinstance(shardings, dict) else shardings
  flat = {tuple(p): (s.get_value() if isinstance(s, nnx.Variable) else s) for p, s in nnx.to_flat_state(state)}
  return lambda path, var: flat[path]


def _once_per_index(read_shard, dtype):
  """JAX calls back once per device; devices holding the same (replicated) shard share one read."""
  done = {}

  def callback(index):
    key = tuple((s.start, s.stop) for s in index)
    if key not in done:
      done[key] = np.asarray(read_shard(index)).astype(dtype, copy=False)
    return done[key]
  return callback


def layout(spec: names_lib.Spec, shape: tuple[int, ...]) -> str:
  """How our parameter's elements sit in its native tensor(s): same | transpose | experts | grouped.

  Read off `spec.to_ours` on a small probe with distinct values, so it follows names.py exactly; the grouped
  `o_a_proj` (ours [G, in_g, R] from native [G·R, in_g]) is the one conversion bound to its real shape.
  """
  native = spec.native_shapes[0]
  if len(spec.names) > 1:
    probe = [np.arange(6.0).reshape(2, 3) + 6 * e for e in range(len(spec.names))]
    candidates = {"experts": np.stack(probe).transpose(0, 2, 1)}
  else:
    probe = [np.arange(float(math.factorial(len(native) + 1))).reshape(tuple(range(2, len(native) + 2)))]
    candidates = {"same": probe[0], **({"transpose": probe[0].T} if len(native) == 2 else {})}
  try:
    got = np.asarray(spec.to_ours(probe))
  except ValueError:  # a conversion that reshapes to the real sizes
    got = None
  for kind, want in candidates.items():
    if got is not None and got.shape == want.shape and np.array_equal(got, want):
      return kind
  if len(spec.names) == 1 and len(shape) == 3 and native == (shape[0] * shape[2], shape[1]):
    return "grouped"
  raise NotImplementedError(f"no sliced read for {spec.path} (native {spec.names[0]} {native} -> ours {shape}); "
                            "teach dsv4.io.sharded_load.layout this conversion.")


def shard_reader(spec: names_lib.Spec, shape: tuple[int, ...], read) -> Callable:
  """index (unit-step slices of our parameter) -> that block in our layout, via read(native_name, native_index)."""
  kind, names = layout(spec, shape), spec.names

  def read_shard(index):
    b = [slice(lo, hi) for lo, hi in slice_bounds(index, shape)]
    if kind == "same":
      return read(names[0], tuple(b))
    if kind == "transpose":
      return read(names[0], (b[1], b[0])).T
    if kind == "experts":
      return np.stack([read(names[e], (b[2], b[1])).T for e in range(b[0].start, b[0].stop)])
    R = shape[2]  # grouped: group g is native rows g·R .. (g+1)·R
    return np.stack([read(names[0], (slice(g * R + b[2].start, g * R + b[2].stop), b[1])).T
                     for g in range(b[0].start, b[0].stop)])
  return read_shard
