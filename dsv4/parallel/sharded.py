"""Modules on a mesh: born sharded from a constructor, or an existing (real or abstract) module placed by the rules.

Born sharded = the init runs inside one `jax.jit` whose `out_shardings` are the rules' shardings, so each
device computes only its shards and no full-size copy exists anywhere. With the (default) partitionable
threefry, random values do not depend on the sharding: every mesh gives bit-identical parameters, equal to the
module built eagerly up to a few ulps (XLA folds `std` into the normal's constants under jit; eager multiplies
afterwards). The target's own entry point is dsv4.model.sharded.init_sharded.

Placing a module also binds the rules (`bind_rules`): every submodule with a `sharding_rules` attribute (the MoE,
whose expert dispatch splits tokens by the `exp` and `batch` rules) gets the same table, so the rules that
shard the weights are the ones the computation follows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from dsv4.parallel.rules import rules_with, state_shardings

RULES_ATTR = "sharding_rules"


def bind_rules(module: nnx.Module, rules: Sequence[tuple] | None) -> nnx.Module:
  """Sets `sharding_rules` on every submodule that has one (static: jitted functions of the graphdef see it)."""
  table = None if rules is None else rules_with(rules, base=())
  for _, sub in nnx.iter_modules(module):
    if hasattr(sub, RULES_ATTR):
      setattr(sub, RULES_ATTR, table)
  return module


def _is_abstract(state: nnx.State) -> bool:
  return all(isinstance(v.get_value(), jax.ShapeDtypeStruct) for _, v in nnx.to_flat_state(state))


def _init_compiler_options(mesh) -> dict | None:
  """The init runs once, and on CPU LLVM's optimisation of its one threefry fusion per parameter dominates its
  compile time (tiny target's init on one CPU device, 2 shared cores at load 7–8: 26–29 s → 15–16 s at level 0)
  while buying nothing; random bits are integer arithmetic (values checked identical on the tiny target). Other
  backends keep their defaults."""
  return {"xla_backend_optimization_level": 0} if all(d.platform == "cpu" for d in mesh.devices.flat) else None


def born_sharded(make: Callable[[], nnx.Module], mesh, rules, fallback: str | None = None) -> nnx.Module:
  """`make()` with every variable created in its rules sharding, and the rules bound."""
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
  shardings = state_shardings(abstract_state, mesh, rules, fallback)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings,
                    compiler_options=_init_compiler_options(mesh))()
  return bind_rules(nnx.merge(graphdef, state), rules)


def shard_model(model: nnx.Module, mesh, rules, fallback: str | None = None) -> nnx.Module:
  """The model with its state placed by the rules (and the rules bound).

  Real arrays are moved (`jax.device_put`, a no-op for ones already there). An abstract model (nnx.eval_shape)
  comes back abstract, its leaves ShapeDtypeStructs carrying the shardings: a restore target for orbax.
  """
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, rules, fallback)
  if _is_abstract(state):
    state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings)
  else:
    state = jax.device_put(state, shardings)
  return bind_rules(nnx.merge(graphdef, state), rules)

