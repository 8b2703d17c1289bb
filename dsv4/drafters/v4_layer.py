"""A V4-style DSpark drafter layer (`layer_type="v4"`): mHC residual streams, sliding-window context attention
and a DeepSeekMoE FFN, after the production V4 drafter ("3 MoE layers with mHC and sliding-window attention of
128", reference/deepseek_v4.md §1.5).

Shapes: B sequences, A blocks, G slots, N = hc_mult streams, D width, S context entries, W = sliding_window,
H query heads, J key/value heads, K head dim.

The layer carries the block's residual as N streams s [B, A, G, N, D] (`DSpark.hidden` expands the block input
to N equal streams with `to_streams` and collapses them with a HyperHead, `from_streams`, before the final norm,
as the target does). One layer, with `HyperConnection` and `MoE` reused from dsv4.model:
  pre, post, comb = attn_hc(s);  s = post ⊗ attn(RMSNorm_attn(Σ_n pre_n s_n)) + combᵀ s
  pre, post, comb = ffn_hc(s);   s = post ⊗ MoE(RMSNorm_ffn(Σ_n pre_n s_n)) + combᵀ s
The MoE has the drafter's own expert count and width (n_routed_experts, num_experts_per_tok,
moe_intermediate_size, n_shared_experts, swiglu_limit) and the target's routing conventions (scoring_func,
routed_scaling_factor, moe_impl); routing is learned (no hash layers: mask slots have no token id), its
balancing bias is FrozenState as in the target, moved after each training step by the aux-loss-free update from
the expert ids `forward` returns (dsv4.training.distill, as pretraining moves the target's). The mHC constants
(Sinkhorn iterations, eps) are the target's.

attn is DenseLayer's GQA: q = rope(q_norm(Wq x)); keys/values are [context ; own block] with
  K_ctx = rope(k_norm(Wk ctx)), V_ctx = Wv ctx      ctx [B, S, D] = DSpark.context_features, shared by all layers,
so the context never enters the streams and `context_kv` is exactly what a dense layer caches (ContextKV's
[N, B, S, J, K] layout is unchanged). Sliding window: the block anchored at p (ctx_len = p) sees context entries
  lo = max(ctx_start, ctx_len − W) ≤ s < ctx_len               (at most W entries, all of its own document)
and its whole own block (bidirectional): `block_attention` with ctx_start tightened to lo. When W < S each block
first gathers its W entries ending at ctx_len (a [B·A, W] context per block), so scores cost O(A·G·W), not
O(A·G·S); the entries the gather clamps or that precede lo are masked by the same rule.

What is V4-like: mHC, the MoE FFN (clamped SwiGLU experts, shared expert, sqrtsoftplus routing with a frozen
balancing bias), the sliding window. What is not, and why: attention keeps the dense drafter's GQA with q/k
norms and full-head RoPE instead of V4's low-rank queries, single shared-KV head with partial RoPE, attention
sinks and grouped low-rank output — those save parameters and KV memory in a 1M-context target, while here the
context K/V are computed once per entry either way and the window bounds their reads; CSA/HCA compression and
the indexer exist for contexts far longer than a 128-entry window, so a drafter layer has no use for them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.drafters.attention import block_attention
from dsv4.drafters.config import DrafterConfig
from dsv4.drafters.layers import add_gqa_projections
from dsv4.model.config import ModelConfig
from dsv4.model.hyper import HyperConnection, HyperHead
from dsv4.model.layers import RMSNorm
from dsv4.model.moe import MoE
from dsv4.model.rope import apply_rope


def moe_config(cfg: DrafterConfig, target_cfg: ModelConfig) -> ModelConfig:
  """The MoE's hyper-parameters: the drafter's expert shapes on the target's routing conventions."""
  return target_cfg.replace(
      hidden_size=cfg.hidden_size, n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
      num_experts_per_tok=cfg.num_experts_per_tok, moe_intermediate_size=cfg.moe_intermediate_size,
      swiglu_limit=math.inf if cfg.swiglu_limit is None else cfg.swiglu_limit)


def window_attention(q_BAGHK, k_blk_BAGJK, v_blk_BAGJK, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA,
                     window: int, scale: float):
  """Block attention over context entries lo = max(ctx_start, ctx_len − window) ≤ s < ctx_len and the own block.

  By definition `block_attention(..., lo, ctx_len)` over the whole context, the path taken when window ≥ S; for
  window < S each block's `window` entries ending at ctx_len are gathered first, so scores cost O(window), not
  O(S), per query. Returns [B, A, G, H, K].
  """
  lo_BA = jnp.maximum(ctx_start_BA, ctx_len_BA - window)
  B, A, G, H, K = q_BAGHK.shape
  S, J = k_ctx_BSJK.shape[1:3]
  if window >= S:
    return block_attention(q_BAGHK, k_blk_BAGJK, v_blk_BAGJK, k_ctx_BSJK, v_ctx_BSJK, lo_BA, ctx_len_BA, scale)
  # Block (b, a) reads entries first + w, w < W, first = ctx_len − W: entry w is visible iff lo − first ≤ w
  # (indices below 0 are clamped and always fall under that bound, since lo ≥ 0).
  first_BA = ctx_len_BA - window
  idx_BAW = jnp.clip(first_BA[..., None] + jnp.arange(window, dtype=jnp.int32), 0, S - 1)
  take = jax.vmap(lambda x_SJK, i_AW: x_SJK[i_AW])
  k_win, v_win = take(k_ctx_BSJK, idx_BAW), take(v_ctx_BSJK, idx_BAW)    # [B, A, W, J, K]
  per_block = lambda x: x.reshape((B * A, 1) + x.shape[2:])              # each block its own sequence
  start_X1 = (lo_BA - first_BA).reshape(B * A, 1)
  out = block_attention(per_block(q_BAGHK), per_block(k_blk_BAGJK), per_block(v_blk_BAGJK),
                        k_win.reshape(B * A, window, J, K), v_win.reshape(B * A, window, J, K), start_X1,
                        jnp.full_like(start_X1, window), scale)
  return out.reshape(B, A, G, H, K)


class WindowAttention(nnx.Module):
  """DenseLayer's GQA (q/k RMSNorm per head, full-head interleaved RoPE, scale hd^-½) over a sliding window."""

  def __init__(self, cfg: DrafterConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.window = cfg.sliding_window
    add_gqa_projections(self, cfg, kw)

  def kv(self, x_XTD, pos_XT):
    """Keys (normalised, rotated at pos) and values, each [..., T, J, K]."""
    shape = x_XTD.shape[:-1] + (self.kv_heads, self.head_dim)
    k = apply_rope(self.k_norm(self.wk(x_XTD).reshape(shape)), pos_XT, self.inv_freq)
    return k, self.wv(x_XTD).reshape(shape)

  def __call__(self, x_BAGD, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA):
    q = self.wq(x_BAGD).reshape(x_BAGD.shape[:-1] + (self.num_heads, self.head_dim))
    q = apply_rope(self.q_norm(q), pos_BAG, self.inv_freq)
    k_blk, v_blk = self.kv(x_BAGD, pos_BAG)
    o = window_attention(q, k_blk, v_blk, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA, self.window,
                         self.head_dim ** -0.5)
    return self.wo(o.reshape(o.shape[:-2] + (-1,)))


def _flat(streams_BAGND):
  """[B, A, G, N, D] → [B, A·G, N, D]: the token-major layout dsv4.model's mHC and MoE take."""
  B, A, G, N, D = streams_BAGND.shape
  return streams_BAGND.reshape(B, A * G, N, D)


class V4Layer(nnx.Module):
  """`__call__(streams_BAGND, pos_BAG, k_ctx, v_ctx, ctx_start_BA, ctx_len_BA) -> streams_BAGND` and
  `context_kv(ctx_BSD, pos_BS)`: DenseLayer's contract with the block stream generalised to N mHC streams."""

  def __init__(self, cfg: DrafterConfig, target_cfg: ModelConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D = cfg.hidden_size
    hc = (D, cfg.hc_mult, target_cfg.hc_sinkhorn_iters, target_cfg.hc_eps, cfg.rms_norm_eps)
    self.attn_hc = HyperConnection(*hc, rngs=rngs)
    self.attn_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.attn = WindowAttention(cfg, **kw)
    self.ffn_hc = HyperConnection(*hc, rngs=rngs)
    self.ffn_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.ffn = MoE(moe_config(cfg, target_cfg), False, **kw)

  def context_kv(self, ctx_BSD, pos_BS):
    """Keys and values of context entries, each [B, S, J, K] (the context skips the streams and the norms)."""
    return self.attn.kv(ctx_BSD, pos_BS)

  def __call__(self, streams_BAGND, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA):
    return self.forward(streams_BAGND, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA)[0]

  def forward(self, streams_BAGND, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA):
    """(streams [B, A, G, N, D], routed expert ids [B, A, G, k]) — the ids feed the routing-bias update."""
    shape = streams_BAGND.shape
    B, A, G = shape[:3]
    s = _flat(streams_BAGND)
    pre, post, comb = self.attn_hc.weights(s)
    x = self.attn_norm(self.attn_hc.collapse(s, pre)).reshape(B, A, G, -1)
    out = self.attn(x, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA)
    s = HyperConnection.expand(s, out.reshape(B, A * G, -1).astype(s.dtype), post, comb)
    pre, post, comb = self.ffn_hc.weights(s)
    y, experts_BTK = self.ffn(self.ffn_norm(self.ffn_hc.collapse(s, pre)))
    s = HyperConnection.expand(s, y.astype(s.dtype), post, comb)
    return s.reshape(shape), experts_BTK.reshape(B, A, G, -1)


def to_streams(h_BAGD, n: int):
  """The block input copied onto n residual streams, [B, A, G, n, D] (the target broadcasts its embedding)."""
  return jnp.broadcast_to(h_BAGD[..., None, :], h_BAGD.shape[:-1] + (n, h_BAGD.shape[-1]))


def stream_head(cfg: DrafterConfig, target_cfg: ModelConfig, *, rngs) -> HyperHead:
  """The HyperHead that collapses the drafter's streams before its final norm."""
  return HyperHead(cfg.hidden_size, cfg.hc_mult, target_cfg.hc_eps, cfg.rms_norm_eps, rngs=rngs)


def from_streams(head: HyperHead, streams_BAGND):
  """Σ_n σ-weights · stream_n through `head`, [B, A, G, D]."""
  B, A, G = streams_BAGND.shape[:3]
  return head(_flat(streams_BAGND)).reshape(B, A, G, -1)
