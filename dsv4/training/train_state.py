"""The training state as plain pytrees, and its shardings.

  {"params": pure dict of trainable arrays, "frozen": pure dict of FrozenState (routing bias, hash table),
   "opt": optax state over params, "step": int32 scalar}

Pure dicts (not nnx.State) keep checkpoints independent of Flax's variable classes; `nnx.merge(graphdef,
params, frozen)` rebuilds the model inside the jitted step. Shardings come from the logical-axis rules: the
optimizer's params-shaped subtrees (Adam moments, Muon momentum) take the params' shardings, its scalars are
replicated, so optimizer state is born sharded like the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.model.layers import FrozenState
from dsv4.parallel.rules import state_shardings


def split_model(model: nnx.Module):
  """(graphdef, params pure dict, frozen pure dict)."""
  graphdef, params, frozen = nnx.split(model, nnx.Param, FrozenState)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(frozen)


def model_shardings(model: nnx.Module, mesh, rules):
  """Pure-dict shardings for (params, frozen) from the rules (works on an abstract model)."""
  _, params, frozen = nnx.split(model, nnx.Param, FrozenState)
  return (nnx.to_pure_dict(state_shardings(params, mesh, rules)),
          nnx.to_pure_dict(state_shardings(frozen, mesh, rules)))


def optimizer_shardings(optimizer: optax.GradientTransformation, params_abstract, params_sharding, mesh):
  """Shardings of `optimizer.init(params)`: params-shaped subtrees like the params, other leaves replicated."""
  opt_abstract = jax.eval_shape(optimizer.init, params_abstract)
  params_def = jax.tree.structure(params_abstract)
  replicated = NamedSharding(mesh, P())

  def assign(subtree):
    if jax.tree.structure(subtree) == params_def:
      return params_sharding
    return jax.tree.map(lambda _: replicated, subtree)

  return jax.tree.map(assign, opt_abstract, is_leaf=lambda x: jax.tree.structure(x) == params_def)


def state_sharding(model: nnx.Module, optimizer, mesh, rules) -> dict:
  params_sh, frozen_sh = model_shardings(model, mesh, rules)
  _, params, _ = split_model(model)
  params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  return {"params": params_sh, "frozen": frozen_sh,
          "opt": optimizer_shardings(optimizer, params_abstract, params_sh, mesh),
          "step": NamedSharding(mesh, P())}


def init_state(model: nnx.Module, optimizer, shardings: dict) -> tuple:
  """(graphdef, state) with the optimizer state created directly in its shardings."""
  graphdef, params, frozen = split_model(model)
  params = jax.device_put(params, shardings["params"])
  frozen = jax.device_put(frozen, shardings["frozen"])
  opt = jax.jit(optimizer.init, out_shardings=shardings["opt"])(params)
  step = jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])
  return graphdef, {"params": params, "frozen": frozen, "opt": opt, "step": step}


def abstract_state(state: dict, shardings: dict) -> dict:
  """ShapeDtypeStructs with shardings: the restore target for a checkpoint of `state`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
