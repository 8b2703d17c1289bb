"""DeepSeekMoE as V4 uses it: routed experts chosen per token plus always-on shared experts.

Routing (fp32): scores = score_fn(x · W_router) with score_fn ∈ {sqrtsoftplus, sigmoid, softmax};
learned layers pick top-k of (scores + balancing bias), hash layers take k experts from a frozen
token-id table. Weights are the *uncorrected* scores of the picked experts, renormalised and times
`routed_scaling_factor`. The bias and the hash table are non-trainable state (FrozenState).

Experts are clamped SwiGLUs, computed by one of these interchangeable paths (`impl=`):

  ragged_dot  dropless grouped matmuls: sort the T·k assignments by expert, `jax.lax.ragged_dot` ×3, unsort.
  tiled       dropless, megablox-style: the sorted groups are padded to multiples of a tile of t rows, so every
              tile belongs to one expert; a static number of tiles (enough for any routing) holds them, and a
              loop runs each used tile's matmuls against its expert's weights. Static shapes, no capacity.
              The kernels (tile_layout, tiled_swiglu) live in dsv4.kernels.tiled_moe, shared with dispatch.
  gather      decode-sized batches (T·k < E): gather just the chosen experts' weights per token.
  dense       reference: every expert on every token (tests only).
  expert_parallel  tokens sent to the devices of the ambient mesh that hold their experts and back
              (dsv4.parallel.expert_parallel; dropless, or capacity-limited by `moe_capacity_factor`); without
              such a mesh it is `ragged`. The split follows the module's `sharding_rules`: the rules table the
              model was placed with (dsv4.parallel.sharded.bind_rules; None: DEFAULT_RULES).

`ragged` (the config value) means "dropless, best kernel": gather when T·k < E; else ragged_dot off CPU (TPU
lowers it to a native grouped matmul, GPU to cuDNN/hipBLASLt grouped GEMMs where they apply) and tiled on CPU.
XLA:CPU expands ragged_dot into one dot over zero-masked copies of the rows for every group ([T·k, E·D] ×
[E·D, I]: E times the flops of the real work), so there it is slower than even the dense reference. The
choice is by backend, not measured per run: scripts/bench_moe.py times the three paths in one process
(experiments/bench_moe/results.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.kernels.tiled_moe import clamped_swiglu, tile_layout, tile_size, tiled_swiglu
from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState, SwiGLU, param
from dsv4.parallel import expert_parallel

EXPERT_IMPLS = ("ragged", "ragged_dot", "tiled", "gather", "dense", "expert_parallel")


def default_hash_table(vocab_size: int, n_experts: int, k: int) -> np.ndarray:
  """A fixed token → k distinct experts table: a multiplicative hash picks the first, the rest stride by E//k."""
  tid = np.arange(vocab_size, dtype=np.uint64)
  first = (tid * np.uint64(2654435761)) % np.uint64(n_experts)
  step = max(n_experts // k, 1)
  table = (first[:, None] + np.arange(k, dtype=np.uint64)[None, :] * np.uint64(step)) % np.uint64(n_experts)
  return table.astype(np.int32)


def score_fn(name: str, logits):
  if name == "sqrtsoftplus":
    return jnp.sqrt(jax.nn.softplus(logits))
  if name == "sigmoid":
    return jax.nn.sigmoid(logits)
  return jax.nn.softmax(logits, axis=-1)


class MoE(nnx.Module):

  def __init__(self, cfg: ModelConfig, is_hash: bool, *, rngs, dtype, param_dtype):
    D, E, I = cfg.hidden_size, cfg.n_routed_experts, cfg.moe_intermediate_size
    self.n_experts, self.top_k, self.is_hash = E, cfg.num_experts_per_tok, is_hash
    self.scoring, self.scaling, self.limit = cfg.scoring_func, cfg.routed_scaling_factor, cfg.swiglu_limit
    self.impl, self.dtype, self.capacity_factor = cfg.moe_impl, dtype, cfg.moe_capacity_factor
    self.sharding_rules = None  # the rules expert dispatch splits by (parallel.sharded.bind_rules; None: default)
    self.router = param(rngs, (D, E), ("embed", None), jnp.float32)
    if is_hash:
      self.tid2eid = FrozenState(jnp.asarray(default_hash_table(cfg.vocab_size, E, self.top_k)),
                                 out_sharding=("vocab", None), eager_sharding=False)
    else:
      self.bias = FrozenState(jnp.zeros((E,), jnp.float32), out_sharding=(None,), eager_sharding=False)
    self.w_gate = param(rngs, (E, D, I), ("exp", "embed", "mlp"), param_dtype)
    self.w_up = param(rngs, (E, D, I), ("exp", "embed", "mlp"), param_dtype)
    self.w_down = param(rngs, (E, I, D), ("exp", "mlp", "embed"), param_dtype)
    self.shared = SwiGLU(D, I * cfg.n_shared_experts, cfg.swiglu_limit, rngs=rngs, dtype=dtype,
                         param_dtype=param_dtype) if cfg.n_shared_experts else None

  def route(self, x_TD, ids_T=None):
    """Returns (weights [T, k] fp32, expert ids [T, k] int32, scores [T, E] fp32)."""
    logits_TE = jnp.dot(x_TD.astype(jnp.float32), self.router[...].astype(jnp.float32))
    scores_TE = score_fn(self.scoring, logits_TE)
    if self.is_hash:
      if ids_T is None:
        raise ValueError("hash-routed MoE layer needs the input token ids")
      idx_TK = self.tid2eid[...][ids_T]
    else:
      _, idx_TK = jax.lax.top_k(scores_TE + self.bias[...], self.top_k)
    w_TK = jnp.take_along_axis(scores_TE, idx_TK, axis=-1)
    w_TK = w_TK / (jnp.sum(w_TK, axis=-1, keepdims=True) + 1e-20) * self.scaling
    return w_TK, idx_TK.astype(jnp.int32), scores_TE

  def experts_ragged(self, x_TD, w_TK, idx_TK):
    """Dropless (`impl="ragged_dot"`): sort the T·k assignments by expert, grouped matmuls, unsort, weight, sum."""
    T, K = idx_TK.shape
    flat_e = idx_TK.reshape(-1)
    order = jnp.argsort(flat_e, stable=True)
    x_sorted = x_TD[order // K].astype(self.dtype)
    group_sizes = jnp.bincount(flat_e, length=self.n_experts).astype(jnp.int32)
    gate = jax.lax.ragged_dot(x_sorted, self.w_gate[...].astype(self.dtype), group_sizes)
    up = jax.lax.ragged_dot(x_sorted, self.w_up[...].astype(self.dtype), group_sizes)
    h = clamped_swiglu(gate, up, self.limit)
    y_sorted = jax.lax.ragged_dot(h, self.w_down[...].astype(self.dtype), group_sizes)
    y_TKD = jnp.zeros_like(y_sorted).at[order].set(y_sorted).reshape(T, K, -1)
    return jnp.einsum("tkd,tk->td", y_TKD.astype(jnp.float32), w_TK).astype(self.dtype)

  def experts_tiled(self, x_TD, w_TK, idx_TK, tile: int | None = None):
    """Dropless, static shapes (megablox-style): the sorted assignments padded per expert to tiles of t rows,
    G = n_tiles(T·k, E, t) tiles of one expert each, tiled_swiglu over them, rows gathered back in order."""
    T, K = idx_TK.shape
    N, D = T * K, x_TD.shape[-1]
    t = tile or tile_size(N, self.n_experts)
    src_R, expert_G, row_X, used = tile_layout(idx_TK, self.n_experts, t)
    valid_R = src_R < N
    # Padding rows are zeros, so they stay finite whatever their tile's weights; their outputs are never read.
    x_RD = jnp.where(valid_R[:, None], x_TD[jnp.where(valid_R, src_R // K, 0)], 0).astype(self.dtype)
    y_GtD = tiled_swiglu(x_RD.reshape(-1, t, D), expert_G, used, self.w_gate[...].astype(self.dtype),
                         self.w_up[...].astype(self.dtype), self.w_down[...].astype(self.dtype), self.limit)
    y_TKD = y_GtD.reshape(-1, D)[row_X].reshape(T, K, D)
    return jnp.einsum("tkd,tk->td", y_TKD.astype(jnp.float32), w_TK).astype(self.dtype)

  def experts_gather(self, x_TD, w_TK, idx_TK):
    """Decode-sized batches: gather the k chosen experts' weights per token (reads k·T, not E, matrices)."""
    x = x_TD.astype(self.dtype)
    wg = self.w_gate[...][idx_TK].astype(self.dtype)  # [T, K, D, I]
    wu = self.w_up[...][idx_TK].astype(self.dtype)
    wd = self.w_down[...][idx_TK].astype(self.dtype)  # [T, K, I, D]
    h = clamped_swiglu(jnp.einsum("td,tkdi->tki", x, wg), jnp.einsum("td,tkdi->tki", x, wu), self.limit)
    y_TKD = jnp.einsum("tki,tkid->tkd", h, wd)
    return jnp.einsum("tkd,tk->td", y_TKD.astype(jnp.float32), w_TK).astype(self.dtype)

  def experts_dense(self, x_TD, w_TK, idx_TK):
    """Reference: every expert on every token, combined with a [T, E] weight matrix (zeros off the top-k)."""
    x = x_TD.astype(self.dtype)
    gate = jnp.einsum("td,edi->tei", x, self.w_gate[...].astype(self.dtype))
    up = jnp.einsum("td,edi->tei", x, self.w_up[...].astype(self.dtype))
    y_TED = jnp.einsum("tei,eid->ted", clamped_swiglu(gate, up, self.limit), self.w_down[...].astype(self.dtype))
    combine_TE = jnp.sum(jax.nn.one_hot(idx_TK, self.n_experts, dtype=jnp.float32) * w_TK[..., None], axis=1)
    return jnp.einsum("ted,te->td", y_TED.astype(jnp.float32), combine_TE).astype(self.dtype)

  def experts_parallel(self, x_TD, w_TK, idx_TK, ep_plan=None):
    """Expert parallel (`impl="expert_parallel"`) over the ambient mesh. In capacity mode the global number of
    dropped assignments is sown as nnx.Intermediate `ep_dropped` (read it with nnx.capture or nnx.pop)."""
    cast = lambda w: w[...].astype(self.dtype)
    y_TD, dropped = expert_parallel.expert_parallel_moe(
        x_TD.astype(self.dtype), w_TK, idx_TK, cast(self.w_gate), cast(self.w_up), cast(self.w_down),
        limit=self.limit, capacity_factor=self.capacity_factor, ep_plan=ep_plan)
    if self.capacity_factor > 0:
      self.sow(nnx.Intermediate, "ep_dropped", dropped)
    return y_TD.astype(self.dtype)

  def expert_path(self, impl: str, n_assign: int):
    """The expert path for `impl` (EXPERT_IMPLS) and a static number of assignments T·k; "ragged" picks one."""
    if impl == "expert_parallel":
      ep_plan = expert_parallel.plan(self.n_experts, self.sharding_rules)  # None: no mesh, or one expert device
      if ep_plan is not None:
        return functools.partial(self.experts_parallel, ep_plan=ep_plan)
      impl = "ragged"
    if impl == "ragged":
      if n_assign < self.n_experts:  # decode steps: reading k·T expert matrices beats reading all E
        impl = "gather"
      else:  # ragged_dot is the grouped-matmul kernel on TPU/GPU; XLA:CPU runs it slower than tiles (bench_moe)
        impl = "tiled" if jax.default_backend() == "cpu" else "ragged_dot"
    paths = {"ragged_dot": self.experts_ragged, "tiled": self.experts_tiled, "gather": self.experts_gather,
             "dense": self.experts_dense}
    if impl not in paths:
      raise ValueError(f"unknown MoE impl {impl!r}; use one of {EXPERT_IMPLS}")
    return paths[impl]

  def __call__(self, x_BTD, ids_BT=None, impl: str | None = None):
    """Returns (output [B, T, D], expert ids [B, T, k]) — the ids feed load statistics and the bias update."""
    B, T, D = x_BTD.shape
    x_TD = x_BTD.reshape(B * T, D)
    w_TK, idx_TK, _ = self.route(x_TD, None if ids_BT is None else ids_BT.reshape(-1))
    y = self.expert_path(impl or self.impl, B * T * self.top_k)(x_TD, w_TK, idx_TK).reshape(B, T, D)
    if self.shared is not None:
      y = y + self.shared(x_BTD)
    return y, idx_TK.reshape(B, T, -1)
