"""Block attention of a DSpark drafter: each block's queries see a prefix of the context and their own block.

Shapes: B sequences, A blocks per sequence, G slots per block, S context entries, H query heads, J key/value
heads (GQA: H = J·R), K head dim.

A query in block (b, a) sees context entry s iff ctx_start[b, a] ≤ s < ctx_len[b, a] (DeepSpec: `c < p_b`, the
whole prefix before the anchor; ctx_start > 0 confines a block to its own document in a packed row), and every
slot of its own block (bidirectional). The two parts are scored separately and merged under one softmax
(a shared max and a summed denominator — the log-sum-exp combine), so visibility is built from per-query
lengths: no [S, S] or [A·G, S + A·G] mask is ever formed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def block_attention(q_BAGHK, k_blk_BAGJK, v_blk_BAGJK, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA,
                    scale: float):
  """Softmax attention over [visible context ; own block], in fp32. Returns [B, A, G, H, K] in q's dtype.

  The own block is always visible, so every row has a finite max even with no visible context (the first
  anchor, or a dummy block); masked context scores contribute exactly zero.
  """
  B, A, G, H, K = q_BAGHK.shape
  J = k_ctx_BSJK.shape[2]
  S = k_ctx_BSJK.shape[1]
  f32 = jnp.float32
  q = q_BAGHK.astype(f32).reshape(B, A, G, J, H // J, K)
  s_ctx = jnp.einsum("bagjrk,bsjk->bagjrs", q, k_ctx_BSJK.astype(f32)) * scale
  slot_S = jnp.arange(S, dtype=jnp.int32)
  visible_BAS = (slot_S >= ctx_start_BA[..., None]) & (slot_S < ctx_len_BA[..., None])
  s_ctx = jnp.where(visible_BAS[:, :, None, None, None, :], s_ctx, -jnp.inf)
  s_blk = jnp.einsum("bagjrk,bahjk->bagjrh", q, k_blk_BAGJK.astype(f32)) * scale
  m = jax.lax.stop_gradient(jnp.maximum(s_ctx.max(-1), s_blk.max(-1)))[..., None]
  p_ctx, p_blk = jnp.exp(s_ctx - m), jnp.exp(s_blk - m)
  denom = p_ctx.sum(-1) + p_blk.sum(-1)
  out = (jnp.einsum("bagjrs,bsjk->bagjrk", p_ctx, v_ctx_BSJK.astype(f32))
         + jnp.einsum("bagjrh,bahjk->bagjrk", p_blk, v_blk_BAGJK.astype(f32)))
  out = out / denom[..., None]
  return out.reshape(B, A, G, H, K).astype(q_BAGHK.dtype)
