"""Per-device memory of a target on a mesh, from abstract shapes only (nothing allocated, any mesh size).

Parameters and the decode cache are sized through the real rules: each array's shard shape is
`NamedSharding(AbstractMesh, spec).shard_shape(global_shape)`, so a plan fails exactly where a real mesh would
(a dimension that does not divide is an error naming the parameter). Activations are an estimate:

  B_d = batch / |batch axes|          sequences per device (the `batch` rule)
  q   = seq (train_drafter: the whole-sequence forward) | min(prefill_chunk, seq) (serve: a prefill chunk of
        `extend`, the largest step of serving)
  keys = seq + seq/4 + 1 (train_drafter: the sliding window is a mask over all seq keys, plus CSA's seq/4
        compressed entries and the sink) | window + q − 1 + seq/4 + 1 (serve: extend's window slice)
  N = B_d · q tokens; a = bytes of the compute dtype; t_h, t_m, t_v = mesh sizes of the heads, mlp and vocab rules
  activation = 2·N·n·D·a                                        mHC streams into and out of a layer
             + 3·N·(H·hd/t_h)·a + 2·B_d·(H/t_h)·q·keys·4        queries, attention outputs; fp32 logits + probs
             + B_d·q·H_idx·(seq/4)·4                            lightning-indexer scores (fp32)
             + N·k·(2·D + 3·I/t_m)·a                            routed assignments: inputs, gate/up/h, outputs
             + N·(V/t_v)·4                                      fp32 logits of the head
             + N·taps·D·a                                       (train_drafter) target taps kept for the drafter
             + (gathered − local) bytes of the largest layer    FSDP: the layer's weights with the fsdp split undone,
                                                                gathered for its matmuls (`fsdp_gather_bytes`)
One layer is live at a time (nothing is differentiated through the frozen target, so nothing is stored per
layer); the terms are summed although they do not all coexist. Checked against XLA's compiled memory_analysis
(temp + output) of the train_drafter forward of base.py cut to 4 layers: estimate/measured = 1.06 at seq 1024 and
1.09 at 2048. Deep models measure higher on XLA:CPU (its scheduler keeps about two residual-stream buffers per
layer alive: base.py's 16 layers at seq 1024 measure 1.35 GB against 0.91 GB estimated).

Optimizer state: serve has none; train_drafter freezes the target (none for it). Given a drafter config,
train_drafter adds the drafter's parameters, optimizer state, batch and activations (dsv4.planning.plan_drafter);
without one it counts the target alone (stated in the plan's notes).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from dsv4.model.config import ModelConfig
from dsv4.model.decode import init_state
from dsv4.model.layers import DTYPES, FrozenState
from dsv4.model.param_count import abstract_model
from dsv4.parallel.rules import checked_spec, path_str, shard_bytes, variable_sharding
from dsv4.planning.plan_drafter import drafter_plan
from dsv4.planning.sizing import axes_size, fsdp_gather_bytes  # noqa: F401  (axes_size: part of this module's API)

# Vendor capacities in decimal GB (H100's "80 GB" is 80 GiB; decimal is the conservative reading).
DEVICES = {
    "h100": ("NVIDIA H100 80 GB", 80e9),
    "h200": ("NVIDIA H200 141 GB", 141e9),
    "b200": ("NVIDIA B200 192 GB", 192e9),
    "v5e": ("TPU v5e 16 GB", 16e9),
    "v5p": ("TPU v5p 95 GB", 95e9),
    "v6e": ("TPU v6e 32 GB", 32e9),
}
JOBS = ("serve", "train_drafter")
CACHE_AXES = ("cache_batch", "cache_seq", None)


def param_groups(abstract) -> list[tuple]:
  """(frozen?, shape, dtype, first path, first variable, count) per distinct (kind, shape, dtype, logical axes).

  Variables of a group share a sharding, so each is sized once per mesh (V4-Pro's ~2,600 variables form a few
  dozen groups); errors name the group's first parameter.
  """
  groups = {}
  for path, var in nnx.to_flat_state(nnx.state(abstract)):
    value = var.get_value()
    key = (isinstance(var, FrozenState), value.shape, value.dtype, var.get_metadata().get("out_sharding"))
    groups.setdefault(key, [path, var, 0])[2] += 1
  return [(k[0], k[1], k[2], path, var, count) for k, (path, var, count) in groups.items()]


def params_per_device(groups, mesh, rules) -> dict:
  """Bytes per device of `param_groups(...)`: {'params': nnx.Param, 'frozen': FrozenState, 'largest': (path, n)}."""
  out = {"params": 0, "frozen": 0, "largest": ("", 0)}
  for frozen, shape, dtype, path, var, count in groups:
    n = shard_bytes(shape, dtype, variable_sharding(path, var, mesh, rules))
    out["frozen" if frozen else "params"] += n * count
    if n > out["largest"][1]:
      out["largest"] = (path_str(path), n)
  return out


@functools.lru_cache(maxsize=8)
def _decode_state_shapes(cfg: ModelConfig, batch: int, max_len: int):
  return jax.eval_shape(lambda: init_state(cfg, batch, max_len))


def cache_per_device(cfg: ModelConfig, batch: int, max_len: int, mesh, rules) -> int:
  """Bytes per device of `decode.init_state(cfg, batch, max_len)`: rows by `cache_batch`, positions by
  `cache_seq`, widths replicated."""
  state = _decode_state_shapes(cfg, batch, max_len)
  total = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    axes = CACHE_AXES[:leaf.ndim]
    spec = checked_spec(f"decode_state{jax.tree_util.keystr(path)}", leaf.shape, axes, rules, mesh)
    total += shard_bytes(leaf.shape, leaf.dtype, NamedSharding(mesh, spec))
  return total


@functools.lru_cache(maxsize=4)
def largest_layer(cfg: ModelConfig):
  """The abstract state of the target's decoder layer with the most parameter bytes (MoE layers differ only in
  routing, so this is any routed layer)."""
  layers = nnx.state(abstract_model(cfg)).layers
  size = lambda st: sum(math.prod(v.get_value().shape) * v.get_value().dtype.itemsize
                        for _, v in nnx.to_flat_state(st))
  return max((layers[i] for i in range(cfg.num_hidden_layers)), key=size)


def activations_per_device(cfg: ModelConfig, job: str, batch: int, seq: int, mesh, rules, prefill_chunk: int = 512,
                           taps: int = 5) -> int:
  """The module docstring's estimate, in bytes."""
  checked_spec("batch", (batch,), ("batch",), rules, mesh)  # the batch must split evenly, as in a real forward
  B_d = batch // axes_size("batch", rules, mesh)
  a = jnp.dtype(DTYPES[cfg.dtype]).itemsize
  t_h, t_m, t_v = (axes_size(n, rules, mesh) for n in ("heads", "mlp", "vocab"))
  D, n, H, hd = cfg.hidden_size, cfg.hc_mult, cfg.num_attention_heads, cfg.head_dim
  comp = seq // 4 if 4 in cfg.compress_ratios else seq // 128 if 128 in cfg.compress_ratios else 0
  if job == "train_drafter":
    q, keys = seq, seq + comp + 1
  else:
    q = min(prefill_chunk, seq)
    keys = cfg.sliding_window + q - 1 + comp + 1
  N = B_d * q
  idx_heads = cfg.index_n_heads if 4 in cfg.compress_ratios else 0
  total = (2 * N * n * D * a
           + 3 * N * (H * hd // t_h) * a + 2 * B_d * (H // t_h) * q * keys * 4
           + B_d * q * idx_heads * comp * 4
           + N * cfg.num_experts_per_tok * (2 * D + 3 * cfg.moe_intermediate_size // t_m) * a
           + N * (cfg.vocab_size // t_v) * 4)
  if job == "train_drafter":
    total += N * taps * D * a
  local, gathered = fsdp_gather_bytes(largest_layer(cfg), mesh, rules)
  return total + gathered - local


def plan(cfg: ModelConfig, mesh, rules, *, job: str, device: str, batch: int, seq: int, headroom: float = 0.1,
         prefill_chunk: int = 512, taps: int = 5, groups=None, drafter=None) -> dict:
  """Per-device bytes by kind and whether they fit `device` with `headroom` of its memory kept free.

  `groups`: `param_groups(abstract_model(cfg))`, passed in when planning many meshes of one model.
  `drafter`: (DrafterConfig, config.train, max_blocks) of the drafter a train_drafter job trains.
  """
  if job not in JOBS:
    raise ValueError(f"job must be one of {JOBS}, got {job!r}")
  if device not in DEVICES:
    raise ValueError(f"device must be one of {sorted(DEVICES)}, got {device!r}")
  p = params_per_device(param_groups(abstract_model(cfg)) if groups is None else groups, mesh, rules)
  kv = cache_per_device(cfg, batch, seq, mesh, rules) if job == "serve" else 0
  act = activations_per_device(cfg, job, batch, seq, mesh, rules, prefill_chunk, taps)
  d = {"params": 0, "rest": 0, "optimizer": 0, "batch": 0, "activations": 0}
  if job == "train_drafter" and drafter is not None:
    dcfg, train, max_blocks = drafter
    d = drafter_plan(dcfg, cfg, train, mesh, rules, batch=batch, seq=seq, max_blocks=max_blocks)
  total = p["params"] + p["frozen"] + kv + act + sum(d.values())
  name, capacity = DEVICES[device]
  if job == "serve":
    notes = ["optimizer_bytes = 0: serving keeps no optimizer state"]
  elif drafter is None:
    notes = ["the target alone: no drafter config given (its parameters, optimizer state and activations are 0)"]
  else:
    notes = [f"drafter {drafter[0].kind}: parameters, optimizer state and batch exact; its activations an estimate "
             "(formula in dsv4/planning/plan_drafter.py)"]
  notes.append("target activation_bytes is an estimate (formula in dsv4/planning/plan.py)")
  return {
      "bytes_per_device": int(total), "fits": bool(total <= capacity * (1 - headroom)),
      "params_bytes": int(p["params"] + p["frozen"]), "frozen_bytes": int(p["frozen"]),
      "drafter_params_bytes": int(d["params"] + d["rest"]), "optimizer_bytes": int(d["optimizer"]),
      "batch_bytes": int(d["batch"]), "drafter_activation_bytes": int(d["activations"]),
      "kv_bytes": int(kv), "activation_bytes": int(act + d["activations"]), "largest_param": p["largest"][0],
      "largest_param_bytes": int(p["largest"][1]), "device": name, "capacity_bytes": int(capacity),
      "usable_bytes": int(capacity * (1 - headroom)), "mesh": dict(mesh.shape), "n_devices": int(mesh.size),
      "job": job, "batch": batch, "seq": seq, "notes": notes,
  }
