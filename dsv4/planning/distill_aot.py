"""The drafter training step compiled ahead of time from abstract shapes: XLA's own per-device memory on any mesh.

Nothing is allocated: the frozen target, the drafter, the AdamW state and the batch are ShapeDtypeStructs carrying
the rules' shardings, the step is the one `train_drafter.py` runs (`distill.make_train_step` with online target
features), lowered and compiled for the mesh. A mesh larger than the machine's devices needs fake CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=N` before JAX starts), as `scripts/aot_drafter_step.py` sets.

`memory_analysis()` splits a device's bytes into arguments (the state, the target and the batch: exactly what
the planner sizes through the same rules), outputs (the new state, aliased onto the donated arguments),
temporaries (activations, gradients, XLA's workspace) and generated code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.drafters.build import abstract_drafter
from dsv4.drafters.config import DrafterConfig
from dsv4.model.config import ModelConfig
from dsv4.model.param_count import abstract_model
from dsv4.parallel.rules import state_shardings
from dsv4.parallel.sharded import bind_rules
from dsv4.training import distill, train_state
from dsv4.training.optimizer import learning_rate, make_optimizer


def _with_shardings(tree, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_batch(batch: int, seq: int, max_blocks: int, shardings: dict, features: dict | None = None) -> dict:
  """Packed rows [batch, seq] and anchors [batch, max_blocks], int32 as the data pipeline makes them, and the
  offline cache's arrays (`features`: name → (trailing shape, dtype)) when given."""
  out = {**{k: jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=shardings[k]) for k in distill.ROW_FIELDS},
         **{k: jax.ShapeDtypeStruct((batch, max_blocks), jnp.int32, sharding=shardings[k])
            for k in distill.BLOCK_FIELDS}}
  for k, (shape, dtype) in (features or {}).items():
    out[k] = jax.ShapeDtypeStruct((batch, seq, *shape), dtype, sharding=shardings[k])
  return out


def cache_features(dcfg: DrafterConfig, target_cfg: ModelConfig, names, dtype) -> dict:
  """The offline cache's arrays per token: final hidden [D], taps [L, D], streams [N, D] (if the drafter reads them)."""
  D = target_cfg.hidden_size
  shapes = {"hidden": (D,), "taps": (dcfg.num_taps, D), "streams": (target_cfg.hc_mult, D)}
  return {k: (shapes[k], jnp.dtype(dtype)) for k in ("hidden", *names) if k in shapes}


def lower_train_step(dcfg: DrafterConfig, target_cfg: ModelConfig, train, mesh, rules, *, batch: int, seq: int,
                     max_blocks: int, features: str = "online"):
  """The drafter training step lowered for `mesh` (a concrete Mesh, fake devices allowed): `features` "online"
  runs the frozen target inside the step, "offline" reads the cache's arrays (train.cache_dtype) from the batch."""
  if dcfg.kind == "mtp":
    raise ValueError("AOT compile covers drafters built from their config (dspark, eagle3); the MTP drafter is a "
                     "copy of the target's own MTP module and is sized by the target's plan.")
  dcfg.check_against_target(target_cfg)
  target = bind_rules(abstract_model(target_cfg), rules)
  tgd, tparams, tfrozen = train_state.split_model(target)
  t_sh = dict(zip(("params", "frozen"), train_state.model_shardings(target, mesh, rules), strict=True))
  target_args = {"params": _with_shardings(tparams, t_sh["params"]),
                 "frozen": _with_shardings(tfrozen, t_sh["frozen"])}

  moe_impl = train.get("moe_impl", "") or None
  drafter = bind_rules(abstract_drafter(dcfg, distill.drafter_target_config(target_cfg, moe_impl)), rules)
  names = tuple(drafter.feature_names)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  p_sh, r_sh = (nnx.to_pure_dict(state_shardings(s, mesh, rules)) for s in (params, rest))
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  optimizer, schedule = make_optimizer(train), learning_rate(train)
  shardings = distill.state_shardings(p_sh, r_sh, optimizer, params, mesh)
  state = {"params": params, "rest": rest, "opt": jax.eval_shape(optimizer.init, params),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  cached = cache_features(dcfg, target_cfg, names, train.cache_dtype) if features == "offline" else {}
  batch_sh = distill.batch_sharding(mesh, rules, {**{k: 2 for k in distill.ROW_FIELDS + distill.BLOCK_FIELDS},
                                                  **{k: 2 + len(s) for k, (s, _) in cached.items()}})

  loss_fn = distill.make_loss_fn(graphdef, dcfg, names, tgd, target_cfg, features, moe_impl)
  step = distill.make_train_step(loss_fn, optimizer, schedule, shardings, t_sh, batch_sh,
                                 expert_bias_rate=float(train.get("expert_bias_rate", 1e-3)))
  args = (_with_shardings(state, shardings), target_args, abstract_batch(batch, seq, max_blocks, batch_sh, cached))
  with jax.set_mesh(mesh):
    return step.lower(*args)


def memory(compiled) -> dict:
  """Per-device bytes of a compiled step; `peak` = arguments + outputs + temporaries − outputs aliased onto
  donated arguments (XLA's live-set bound)."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes), "output_bytes": int(m.output_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes), "temp_bytes": int(m.temp_size_in_bytes),
         "generated_code_bytes": int(m.generated_code_size_in_bytes)}
  out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
  return out


__all__ = ["abstract_batch", "cache_features", "lower_train_step", "memory"]
