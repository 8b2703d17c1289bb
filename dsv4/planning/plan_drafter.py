"""Per-device memory of a drafter in training: the drafter half of a `train_drafter` plan (dsv4.planning.plan).

Exact, through the rules on abstract shapes: the drafter's parameters and other variables, the optimizer's state
(`optax` `init` on abstract parameters, sharded like the parameters as `train_drafter.py` does) and the batch
(4 int32 row arrays [B, T] and 2 anchor arrays [B, A], split over the `batch` axes).

Activations are an estimate of what the step keeps live, per device:

  B_d = batch / |batch axes|, T = seq, A = max_blocks, G = block_size, M = B_d·A·G slots, a = compute dtype bytes,
  w = parameter dtype bytes; D, n = hc_mult (v4 layers, else 1), H/t_h query heads, J kv heads, K head dim, C =
  context entries a slot reads (T for dense layers, the window W for v4 layers), V/t_v the vocabulary shard

  context   = B_d·T·(taps + 1)·D·a + L_d·2·B_d·T·J·K·a               fused taps and every layer's context K/V
  per layer = M·(4·n·D + 3·(H/t_h)·K)·a + 2·M·(H/t_h)·(C + G)·4     streams (mHC in/out), q/k/v/attention out;
                                                                    fp32 scores and probabilities
            + M·3·I/t_m·a (dense)  |  M·(k·(2·D + 3·I_e/t_m) + 3·I_e/t_m)·a + 2·B_d·A·W·J·K·a (v4: routed and shared
                                                                    expert activations, the gathered K/V windows)
  gradients = the drafter's parameter bytes per device               every parameter's gradient, sharded like it
  FSDP      = 2·(gathered − local bytes of the largest layer)        a layer's weights with the fsdp split undone
                                                                    for its matmuls, and its full-size gradient
                                                                    before the reduce-scatter (`fsdp_gather_bytes`)
            + 2·(V/t_v)·D·w·(1 − 1/fsdp)                             the frozen embedding and head, gathered
  logits    = 5·M·(V/t_v)·4                                          drafter logits and their gradient, the head's
                                                                    and the sequential head's outputs, target logits

Compared with XLA's compiled `memory_analysis()` of the real step by `scripts/aot_drafter_step.py`
(experiments/aot_drafter_step).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.drafters.build import abstract_drafter
from dsv4.drafters.config import DrafterConfig
from dsv4.model.config import ModelConfig
from dsv4.model.layers import DTYPES
from dsv4.parallel.rules import checked_spec, shard_bytes, state_shardings, variable_sharding
from dsv4.planning.sizing import axes_size, fsdp_gather_bytes
from dsv4.training.optimizer import make_optimizer
from dsv4.training.train_state import optimizer_shardings

ROW_ARRAYS, ANCHOR_ARRAYS = 4, 2  # tokens, segment ids, positions, target mask; anchor, keep


def _variables_bytes(state, mesh, rules) -> int:
  return sum(shard_bytes(v.get_value().shape, v.get_value().dtype, variable_sharding(p, v, mesh, rules))
             for p, v in nnx.to_flat_state(state))


@functools.lru_cache(maxsize=4)
def _abstract_split(dcfg: DrafterConfig, target_cfg: ModelConfig):
  """(params, rest) of the abstract drafter, built once per config (a plan --search sizes it on many meshes)."""
  _, params, rest = nnx.split(abstract_drafter(dcfg, target_cfg), nnx.Param, ...)
  return params, rest


def state_per_device(dcfg: DrafterConfig, target_cfg: ModelConfig, train, mesh, rules) -> dict:
  """{'params', 'rest', 'optimizer'} bytes per device of the drafter's training state."""
  params, rest = _abstract_split(dcfg, target_cfg)
  abstract = nnx.to_pure_dict(params)
  optimizer = make_optimizer(train)
  opt = jax.eval_shape(optimizer.init, abstract)
  opt_sh = optimizer_shardings(optimizer, abstract, nnx.to_pure_dict(state_shardings(params, mesh, rules)), mesh)
  opt_bytes = sum(shard_bytes(x.shape, x.dtype, s)
                  for x, s in zip(jax.tree.leaves(opt), jax.tree.leaves(opt_sh), strict=True))
  return {"params": _variables_bytes(params, mesh, rules), "rest": _variables_bytes(rest, mesh, rules),
          "optimizer": int(opt_bytes)}


def batch_per_device(batch: int, seq: int, max_blocks: int, mesh, rules) -> int:
  spec = checked_spec("batch", (batch,), ("batch",), rules, mesh)
  rows = shard_bytes((batch, seq), jnp.int32, NamedSharding(mesh, P(*spec, None)))
  anchors = shard_bytes((batch, max_blocks), jnp.int32, NamedSharding(mesh, P(*spec, None)))
  return ROW_ARRAYS * rows + ANCHOR_ARRAYS * anchors


def activations_per_device(dcfg: DrafterConfig, target_cfg: ModelConfig, *, batch: int, seq: int, max_blocks: int,
                           mesh, rules) -> int:
  """The module docstring's estimate, in bytes."""
  B_d = batch // axes_size("batch", rules, mesh)
  a = jnp.dtype(DTYPES[dcfg.dtype]).itemsize
  w = jnp.dtype(DTYPES[dcfg.param_dtype]).itemsize
  t_h, t_m, t_v = (axes_size(n, rules, mesh) for n in ("heads", "mlp", "vocab"))
  D, G, A, T = dcfg.hidden_size, dcfg.block_size, max_blocks, seq
  H, J, K = dcfg.num_attention_heads // t_h, dcfg.num_key_value_heads, dcfg.head_dim
  M = B_d * A * G
  v4 = dcfg.layer_type == "v4"
  n = dcfg.hc_mult if v4 else 1
  C = min(dcfg.sliding_window, T) if v4 else T
  context = B_d * T * (dcfg.num_taps + 1) * D * a + dcfg.num_layers * 2 * B_d * T * J * K * a
  layer = M * (4 * n * D + 3 * H * K) * a + 2 * M * H * (C + G) * 4
  if v4:
    I_e = dcfg.moe_intermediate_size // t_m
    layer += M * (dcfg.num_experts_per_tok * (2 * D + 3 * I_e) + 3 * I_e) * a + 2 * B_d * A * C * J * K * a
  else:
    layer += M * 3 * (dcfg.intermediate_size // t_m) * a
  params, _ = _abstract_split(dcfg, target_cfg)
  grads = fsdp_gather_bytes(params, mesh, rules)[0]
  layers = [params["layers"][i] for i in range(dcfg.num_layers)] if "layers" in params else [params]  # EAGLE-3: one
  extra = max(gathered - local for local, gathered in (fsdp_gather_bytes(st, mesh, rules) for st in layers))
  V = target_cfg.vocab_size // t_v
  fsdp = 2 * extra + 2 * V * D * w * (1 - 1 / dict(mesh.shape).get("fsdp", 1))
  logits = 5 * M * V * 4
  return int(context + dcfg.num_layers * layer + grads + fsdp + logits)


def drafter_plan(dcfg: DrafterConfig, target_cfg: ModelConfig, train, mesh, rules, *, batch: int, seq: int,
                 max_blocks: int) -> dict:
  """Per-device bytes: {'params', 'rest', 'optimizer', 'batch', 'activations'}."""
  if dcfg.kind == "mtp":
    raise ValueError("the MTP drafter is a copy of the target's MTP module; plan the target (its MTP is counted).")
  out = state_per_device(dcfg, target_cfg, train, mesh, rules)
  out["batch"] = batch_per_device(batch, seq, max_blocks, mesh, rules)
  out["activations"] = activations_per_device(dcfg, target_cfg, batch=batch, seq=seq, max_blocks=max_blocks,
                                              mesh=mesh, rules=rules)
  return out
