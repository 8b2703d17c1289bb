"""Models on a mesh: born sharded from a config, or an existing (real or abstract) model placed by the rules.

Born sharded = the init runs inside one `jax.jit` whose `out_shardings` are the rules' shardings, so each
device computes only its shards and no full-size copy exists anywhere. With the (default) partitionable
threefry, random values do not depend on the sharding: every mesh gives bit-identical parameters, equal to
`Transformer(cfg, rngs=Rngs(seed))` built eagerly up to a few ulps (XLA folds `std` into the normal's
constants under jit; eager multiplies afterwards).
"""

from __future__ import annotations

import jax
from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.parallel.rules import state_shardings


def _is_abstract(state: nnx.State) -> bool:
  return all(isinstance(v.get_value(), jax.ShapeDtypeStruct) for _, v in nnx.to_flat_state(state))


def _init_compiler_options(mesh) -> dict | None:
  """The init runs once, and on CPU LLVM's optimisation of its one threefry fusion per parameter dominates its
  compile time (tiny target: ~30 s → ~15 s at level 0) while buying nothing; random bits are integer
  arithmetic (values checked identical on the tiny target). Other backends keep their defaults."""
  return {"xla_backend_optimization_level": 0} if all(d.platform == "cpu" for d in mesh.devices.flat) else None


def init_sharded(config: ModelConfig, mesh, rules, seed: int = 0, fallback: str | None = None) -> Transformer:
  """`Transformer(config, rngs=nnx.Rngs(seed))` with every variable created in its rules sharding."""
  make = lambda: Transformer(config, rngs=nnx.Rngs(seed))  # noqa: E731
  graphdef, abstract_state = nnx.split(nnx.eval_shape(make))
  shardings = state_shardings(abstract_state, mesh, rules, fallback)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda: nnx.state(make()), out_shardings=shardings,
                    compiler_options=_init_compiler_options(mesh))()
  return nnx.merge(graphdef, state)


def shard_model(model: nnx.Module, mesh, rules, fallback: str | None = None) -> nnx.Module:
  """The model with its state placed by the rules.

  Real arrays are moved (`jax.device_put`, a no-op for ones already there). An abstract model (nnx.eval_shape)
  comes back abstract, its leaves ShapeDtypeStructs carrying the shardings: a restore target for orbax.
  """
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, rules, fallback)
  if _is_abstract(state):
    state = jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), state, shardings)
  else:
    state = jax.device_put(state, shardings)
  return nnx.merge(graphdef, state)
