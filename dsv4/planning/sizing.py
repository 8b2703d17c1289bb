"""Sizing helpers shared by the target planner (plan.py) and the drafter planner (plan_drafter.py): how many ways
the rules split a logical dimension, and the bytes a layer's FSDP gather adds."""

from __future__ import annotations

import math

from flax import nnx

from dsv4.parallel.rules import logical_to_spec, shard_bytes, variable_sharding


def axes_size(logical: str, rules, mesh) -> int:
  """How many ways the rules split a `logical` dimension on this mesh."""
  entry = logical_to_spec((logical,), rules)[0]
  sizes = dict(mesh.shape)
  return math.prod(sizes.get(a, 1) for a in ((entry,) if isinstance(entry, str) else entry or ()))


def fsdp_gather_bytes(layer_state, mesh, rules) -> tuple[int, int]:
  """(local, gathered) bytes per device of a layer's variables: as sharded, and with their fsdp split undone
  (expert and tensor splits kept) — what an FSDP matmul gathers."""
  fsdp = dict(mesh.shape).get("fsdp", 1)
  local = gathered = 0
  for path, var in nnx.to_flat_state(layer_state):
    value = var.get_value()
    sharding = variable_sharding(path, var, mesh, rules)
    n = shard_bytes(value.shape, value.dtype, sharding)
    local += n
    split = any("fsdp" in ((e,) if isinstance(e, str) else e or ()) for e in sharding.spec)
    gathered += n * fsdp if split else n
  return local, gathered
