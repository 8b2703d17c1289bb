"""The target's forward on a mesh: `jax.jit` with explicit in/out shardings (what `pjit` used to be).

Inputs: the state in its rules shardings, token ids [B, T] sharded by the `batch` rule (default
("data", "fsdp")) on B. Outputs: every TargetOutput field sharded on its batch dimension (found from the
field's shape suffix, e.g. `experts_LBTK` → dim 1) and replicated otherwise, so logits come back whole per
sequence. With moe_impl="expert_parallel" the MoE dispatches tokens by the same rules (dsv4.parallel.expert_parallel);
otherwise XLA's SPMD partitioner partitions the routing, the ragged expert matmuls and the einsums itself.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.parallel.rules import checked_spec, logical_to_spec, state_shardings
from dsv4.parallel.sharded import bind_rules


def batch_dim(name: str, ndim: int) -> int | None:
  """Position of B in a field's shape suffix (`logits_BTV` → 0, `experts_LBTK` → 1), if it has one."""
  suffix = name.rsplit("_", 1)[-1]
  return suffix.index("B") if len(suffix) == ndim and "B" in suffix else None


def output_shardings(out_abstract, mesh, rules):
  """Shardings for a dataclass of arrays: batch dim by the `batch` rule, everything else replicated."""
  batch_axes = logical_to_spec(("batch",), rules)[0]
  shardings = {}
  for name, value in vars(out_abstract).items():
    if value is None:
      shardings[name] = None
      continue
    spec = [None] * value.ndim
    dim = batch_dim(name, value.ndim)
    if dim is not None:
      spec[dim] = batch_axes
    shardings[name] = NamedSharding(mesh, P(*spec))
  return type(out_abstract)(**shardings)


def jit_forward_sharded(model: nnx.Module, mesh, rules, **forward_kwargs):
  """`ids_BT -> TargetOutput`, jitted over the model's state in its rules shardings on `mesh`.

  The state is placed once (no-op when born sharded); ids are put on the batch sharding per call, and a batch
  that does not divide over the `batch` axes is an error naming them. The rules are bound to the model's expert
  dispatch as well (`bind_rules`).
  """
  graphdef, state = nnx.split(bind_rules(model, rules))
  state_sh = state_shardings(state, mesh, rules)
  state = jax.device_put(state, state_sh)

  def run(state, ids_BT):
    return nnx.merge(graphdef, state).forward(ids_BT, **forward_kwargs)

  compiled = {}

  def forward(ids_BT):
    ids_sh = NamedSharding(mesh, checked_spec("input_ids", ids_BT.shape, ("batch", "seq"), rules, mesh))
    if "fn" not in compiled:  # the output's structure is fixed by forward_kwargs; find it once
      out_abstract = jax.eval_shape(run, state, jax.ShapeDtypeStruct(ids_BT.shape, ids_BT.dtype))
      compiled["fn"] = jax.jit(run, in_shardings=(state_sh, ids_sh),
                               out_shardings=output_shardings(out_abstract, mesh, rules))
    with jax.set_mesh(mesh):
      return compiled["fn"](state, jax.device_put(ids_BT, ids_sh))

  return forward
