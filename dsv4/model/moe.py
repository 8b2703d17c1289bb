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
  gather      decode-sized batches (T·k < E): gather just the chosen experts' weights per token.
  dense       reference: every expert on every token (tests only).
  expert_parallel  tokens sent to the devices of the ambient mesh that hold their experts and back
              (dsv4.parallel.expert_parallel; dropless, or capacity-limited by `moe_capacity_factor`); without
              such a mesh it is `ragged`.

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

from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState, SwiGLU, clamped_swiglu, param

EXPERT_IMPLS = ("ragged", "ragged_dot", "tiled", "gather", "dense", "expert_parallel")


def default_hash_table(vocab_size: int, n_experts: int, k: int) -> np.ndarray:
  """A fixed token → k distinct experts table: a multiplicative hash picks the first, the rest stride by E//k."""
  tid = np.arange(vocab_size, dtype=np.uint64)
  first = (tid * np.uint64(2654435761)) % np.uint64(n_experts)
  step = max(n_experts // k, 1)
  table = (first[:, None] + np.arange(k, dtype=np.uint64)[None, :] * np.uint64(step)) % np.uint64(n_experts)
  return table.astype(np.int32)


def tile_size(n_assign: int, n_experts: int) -> int:
  """Rows per tile for N = `n_assign` assignments over E = `n_experts` experts: static, a power of two in [16, 128].

  Each non-empty group pads up to t − 1 rows, so t follows the mean group size N/E (the largest power of two not
  above it): the static rows G·t < N + E·t + t stay within about 2N once N/E ≥ 16. Below 16 rows a tile's
  matmul is dominated by reading its expert's weights.
  """
  mean = max(n_assign // max(n_experts, 1), 1)
  return int(min(max(16, 1 << (mean.bit_length() - 1)), 128))


def n_tiles(n_assign: int, n_experts: int, tile: int) -> int:
  """Static tile count that holds any routing: each non-empty group (≤ min(E, N) of them) pads < t rows."""
  return -(-(n_assign + min(n_experts, n_assign) * (tile - 1)) // tile)


def tile_layout(idx_TK, n_experts: int, tile: int):
  """Where each of the N = T·k assignments goes in the tiled layout (integer bookkeeping, no gradients).

  Groups sorted by expert start at multiples of `tile`; G = n_tiles(N, E, tile) tiles of `tile` rows (R = G·tile).
  Returns (src_R [R] int32: flat assignment index t·k + j of each row, N for a padding row;
           expert_G [G] int32: the expert of each tile (tiles past the last group get E − 1);
           row_N [N] int32: the row of each assignment;
           used: int32 scalar, the tiles that hold assignments — tiles [used, G) are all padding).
  """
  N, E = idx_TK.size, n_experts
  G = n_tiles(N, E, tile)
  flat_e = idx_TK.reshape(-1).astype(jnp.int32)
  order = jnp.argsort(flat_e, stable=True).astype(jnp.int32)
  sorted_e = flat_e[order]
  size_E = jnp.bincount(flat_e, length=E).astype(jnp.int32)
  padded_E = (size_E + tile - 1) // tile * tile
  end_E = jnp.cumsum(padded_E)
  start_E, pstart_E = jnp.cumsum(size_E) - size_E, end_E - padded_E
  row_sorted = pstart_E[sorted_e] + jnp.arange(N, dtype=jnp.int32) - start_E[sorted_e]
  row_N = jnp.zeros((N,), jnp.int32).at[order].set(row_sorted, unique_indices=True)
  src_R = jnp.full((G * tile,), N, jnp.int32).at[row_sorted].set(order, unique_indices=True)
  # Tile g starts at row g·t; its expert is the number of groups that end at or before that row ([G, E] compares
  # compile and run faster on CPU than searchsorted's loop).
  expert_G = jnp.sum(end_E[None, :] <= jnp.arange(G, dtype=jnp.int32)[:, None] * tile, axis=1, dtype=jnp.int32)
  return src_R, jnp.minimum(expert_G, E - 1), row_N, (end_E[-1] // tile).astype(jnp.int32)


# --- tiled grouped SwiGLU ---------------------------------------------------------------------------------------
# A loop over the used tiles, each a plain [t, D] × [D, I] matmul against its expert's weights read in place. On
# XLA:CPU this beats the batched form (gathering a [G, D, I] copy of the weights per tile: tens of MB of fresh
# memory per call) and skips the all-padding tiles. Autodiff of such a loop would add a full [E, D, I] zero-padded
# weight gradient per tile, so the backward is written out: the same loop, accumulating into the tile's expert.

def _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate, w_up, w_down, limit, save: bool):
  G, t, _ = x_GtD.shape
  I, D = w_down.shape[1:]

  def body(g, carry):
    y_GtD, gate_GtI, up_GtI = carry
    e, x_tD = expert_G[g], x_GtD[g]
    gate_tI, up_tI = x_tD @ w_gate[e], x_tD @ w_up[e]
    y_GtD = y_GtD.at[g].set(clamped_swiglu(gate_tI, up_tI, limit) @ w_down[e])
    if save:
      gate_GtI, up_GtI = gate_GtI.at[g].set(gate_tI), up_GtI.at[g].set(up_tI)
    return y_GtD, gate_GtI, up_GtI

  act = (G, t, I) if save else (0, t, I)
  init = (jnp.zeros((G, t, D), x_GtD.dtype), jnp.zeros(act, x_GtD.dtype), jnp.zeros(act, x_GtD.dtype))
  return jax.lax.fori_loop(0, used, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def tiled_swiglu(x_GtD, expert_G, used, w_gate_EDI, w_up_EDI, w_down_EID, limit):
  """y[g] = clamped_swiglu(x[g] @ w_gate[e], x[g] @ w_up[e]) @ w_down[e], e = expert_G[g], for tiles g < used;
  tiles ≥ used are left zero. Differentiable in x and the weights (limit is a Python float)."""
  return _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate_EDI, w_up_EDI, w_down_EID, limit, save=False)[0]


def _tiled_swiglu_fwd(x_GtD, expert_G, used, w_gate, w_up, w_down, limit):
  y, gate, up = _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate, w_up, w_down, limit, save=True)
  return y, (x_GtD, expert_G, used, w_gate, w_up, w_down, gate, up)


def _tiled_swiglu_bwd(limit, res, dy_GtD):
  x_GtD, expert_G, used, w_gate, w_up, w_down, gate_GtI, up_GtI = res
  acc = jnp.promote_types(w_gate.dtype, jnp.float32)

  def body(g, carry):
    dx_GtD, dwg, dwu, dwd = carry
    e, x_tD, dy_tD = expert_G[g], x_GtD[g], dy_GtD[g]
    h_tI, swiglu_vjp = jax.vjp(lambda a, b: clamped_swiglu(a, b, limit), gate_GtI[g], up_GtI[g])
    dgate_tI, dup_tI = swiglu_vjp((dy_tD @ w_down[e].T).astype(h_tI.dtype))
    dx_GtD = dx_GtD.at[g].set((dgate_tI @ w_gate[e].T + dup_tI @ w_up[e].T).astype(dx_GtD.dtype))
    # Weight gradients accumulate in ≥ fp32 in place (slice, add, write back), one expert's matrices per tile.
    dwg = jax.lax.dynamic_update_index_in_dim(dwg, dwg[e] + jnp.dot(x_tD.T, dgate_tI, preferred_element_type=acc),
                                              e, 0)
    dwu = jax.lax.dynamic_update_index_in_dim(dwu, dwu[e] + jnp.dot(x_tD.T, dup_tI, preferred_element_type=acc),
                                              e, 0)
    dwd = jax.lax.dynamic_update_index_in_dim(dwd, dwd[e] + jnp.dot(h_tI.T, dy_tD, preferred_element_type=acc),
                                              e, 0)
    return dx_GtD, dwg, dwu, dwd

  init = (jnp.zeros_like(x_GtD), jnp.zeros(w_gate.shape, acc), jnp.zeros(w_up.shape, acc),
          jnp.zeros(w_down.shape, acc))
  dx, dwg, dwu, dwd = jax.lax.fori_loop(0, used, body, init)
  return dx, None, None, dwg.astype(w_gate.dtype), dwu.astype(w_up.dtype), dwd.astype(w_down.dtype)


tiled_swiglu.defvjp(_tiled_swiglu_fwd, _tiled_swiglu_bwd)


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
    src_R, expert_G, row_N, used = tile_layout(idx_TK, self.n_experts, t)
    valid_R = src_R < N
    # Padding rows are zeros, so they stay finite whatever their tile's weights; their outputs are never read.
    x_RD = jnp.where(valid_R[:, None], x_TD[jnp.where(valid_R, src_R // K, 0)], 0).astype(self.dtype)
    y_GtD = tiled_swiglu(x_RD.reshape(-1, t, D), expert_G, used, self.w_gate[...].astype(self.dtype),
                         self.w_up[...].astype(self.dtype), self.w_down[...].astype(self.dtype), self.limit)
    y_TKD = y_GtD.reshape(-1, D)[row_N].reshape(T, K, D)
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
    from dsv4.parallel import expert_parallel  # lazy: that module imports this one

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
      from dsv4.parallel import expert_parallel  # lazy: that module imports this one

      ep_plan = expert_parallel.plan(self.n_experts)  # None: no mesh, or one expert device
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
