"""DeepSeekMoE as V4 uses it: routed experts chosen per token plus always-on shared experts.

Routing (fp32): scores = score_fn(x · W_router) with score_fn ∈ {sqrtsoftplus, sigmoid, softmax};
learned layers pick top-k of (scores + balancing bias), hash layers take k experts from a frozen
token-id table. Weights are the *uncorrected* scores of the picked experts, renormalised and times
`routed_scaling_factor`. The bias and the hash table are non-trainable state (FrozenState).

Experts are clamped SwiGLUs, computed by one of four interchangeable paths (`impl=`):

  ragged_dot  dropless grouped matmuls: sort the T·k assignments by expert, `jax.lax.ragged_dot` ×3, unsort.
  tiled       dropless, megablox-style: the sorted groups are padded to multiples of a tile of t rows, so every
              tile belongs to one expert; a static number of tiles runs as batched matmuls against each tile's
              gathered expert weights. Static shapes throughout, no capacity, nothing dropped.
  gather      decode-sized batches (T·k < E): gather just the chosen experts' weights per token.
  dense       reference: every expert on every token (tests only).

`ragged` (the config value) means "dropless, best kernel": gather when T·k < E, else ragged_dot on TPU/GPU,
where it lowers to a grouped-matmul kernel that does no padding work, and tiled on CPU, where XLA has no such
kernel and ragged_dot runs slower than even the dense reference (scripts/bench_moe.py measures this).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState, SwiGLU, clamped_swiglu, param

EXPERT_IMPLS = ("ragged", "ragged_dot", "tiled", "gather", "dense")


def default_hash_table(vocab_size: int, n_experts: int, k: int) -> np.ndarray:
  """A fixed token → k distinct experts table: a multiplicative hash picks the first, the rest stride by E//k."""
  tid = np.arange(vocab_size, dtype=np.uint64)
  first = (tid * np.uint64(2654435761)) % np.uint64(n_experts)
  step = max(n_experts // k, 1)
  table = (first[:, None] + np.arange(k, dtype=np.uint64)[None, :] * np.uint64(step)) % np.uint64(n_experts)
  return table.astype(np.int32)


def tile_size(n_assign: int, n_experts: int) -> int:
  """Rows per tile for `n_assign` assignments over `n_experts` experts (static, a power of two in [8, 128]).

  Padding costs up to min(E, N)·(t−1) rows and every tile one gather of its expert's weights, so t grows with the
  mean group size N/E: the smallest power of two ≥ N/E, i.e. about one tile per busy expert.
  """
  mean = -(-n_assign // max(n_experts, 1))
  return int(min(max(8, 1 << max(mean - 1, 0).bit_length()), 128))


def n_tiles(n_assign: int, n_experts: int, tile: int) -> int:
  """Static tile count that holds any routing: each non-empty group (≤ min(E, N) of them) pads < t rows."""
  return -(-(n_assign + min(n_experts, n_assign) * (tile - 1)) // tile)


def tile_layout(idx_TK, n_experts: int, tile: int):
  """Where each of the N = T·k assignments goes in the tiled layout (integer bookkeeping, no gradients).

  Groups sorted by expert start at multiples of `tile`; G = n_tiles(N, E, tile) tiles of `tile` rows (R = G·tile).
  Returns (src_R [R] int32: flat assignment index t·k + j of each row, N for a padding row;
           expert_G [G] int32: the expert of each tile (tiles past the last group get E − 1, outputs unused);
           row_N [N] int32: the row of each assignment).
  """
  N, E = idx_TK.size, n_experts
  G = n_tiles(N, E, tile)
  flat_e = idx_TK.reshape(-1).astype(jnp.int32)
  order = jnp.argsort(flat_e, stable=True).astype(jnp.int32)
  sorted_e = flat_e[order]
  size_E = jnp.bincount(flat_e, length=E).astype(jnp.int32)
  padded_E = (size_E + tile - 1) // tile * tile
  start_E, pstart_E = jnp.cumsum(size_E) - size_E, jnp.cumsum(padded_E) - padded_E
  row_sorted = pstart_E[sorted_e] + jnp.arange(N, dtype=jnp.int32) - start_E[sorted_e]
  row_N = jnp.zeros((N,), jnp.int32).at[order].set(row_sorted, unique_indices=True)
  src_R = jnp.full((G * tile,), N, jnp.int32).at[row_sorted].set(order, unique_indices=True)
  # Tile g starts at row g·t; its expert is the number of groups that end at or before that row.
  expert_G = jnp.searchsorted(pstart_E + padded_E, jnp.arange(G, dtype=jnp.int32) * tile, side="right")
  return src_R, jnp.minimum(expert_G, E - 1).astype(jnp.int32), row_N


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
    self.impl, self.dtype = cfg.moe_impl, dtype
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
    """Dropless (`impl="ragged_dot"`): sort the T·k assignments by expert, two grouped matmuls, unsort, weight and sum."""
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
    """Dropless, static shapes: tiles of t rows, one expert each, as batched matmuls "gtd,gdi->gti"."""
    T, K = idx_TK.shape
    N, D = T * K, x_TD.shape[-1]
    t = tile or tile_size(N, self.n_experts)
    src_R, expert_G, row_N = tile_layout(idx_TK, self.n_experts, t)
    G = expert_G.shape[0]
    valid_R = src_R < N
    # Padding rows are zeros, so they stay finite whatever their tile's weights; their outputs are never read.
    x_RD = jnp.where(valid_R[:, None], x_TD[jnp.where(valid_R, src_R // K, 0)], 0).astype(self.dtype)
    x_GtD = x_RD.reshape(G, t, D)
    wg = self.w_gate[...].astype(self.dtype)[expert_G]  # [G, D, I]
    wu = self.w_up[...].astype(self.dtype)[expert_G]
    wd = self.w_down[...].astype(self.dtype)[expert_G]  # [G, I, D]
    h = clamped_swiglu(jnp.einsum("gtd,gdi->gti", x_GtD, wg), jnp.einsum("gtd,gdi->gti", x_GtD, wu), self.limit)
    y_RD = jnp.einsum("gti,gid->gtd", h, wd).reshape(G * t, D)
    y_TKD = y_RD[row_N].reshape(T, K, D)
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

  def experts(self, impl: str, n_assign: int):
    """The expert path for `impl` (EXPERT_IMPLS) and a static number of assignments T·k; "ragged" picks one."""
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
    y = self.experts(impl or self.impl, B * T * self.top_k)(x_TD, w_TK, idx_TK).reshape(B, T, D)
    if self.shared is not None:
      y = y + self.shared(x_BTD)
    return y, idx_TK.reshape(B, T, -1)
