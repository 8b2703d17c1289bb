"""The lightning indexer of CSA layers: picks, per query, the `index_topk` compressed entries to attend.

  score(t, c) = Σ_h  w_{t,h} · ReLU(q_{t,h} · k_c) · index_head_dim^−½,   w_t = weights_proj(x_t) · n_heads^−½
The keys k_c come from the indexer's own overlapping compressor (width index_head_dim); queries come from
the attention's low-rank query residual. Both are rotated with the compressed layers' RoPE.

Tie-break rule (documented, tested): among equal scores the lower entry index wins (`lax.top_k` order).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.compressor import Compressor, compressed_visible
from dsv4.model.config import ModelConfig
from dsv4.model.layers import Linear
from dsv4.model.rope import apply_rope


class Indexer(nnx.Module):

  def __init__(self, cfg: ModelConfig, ratio: int, inv_freq, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.n_heads, self.head_dim, self.topk, self.ratio = (cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk,
                                                          ratio)
    self.compressor = Compressor(cfg.hidden_size, cfg.index_head_dim, ratio, True, cfg.rms_norm_eps, inv_freq, **kw)
    self.q_b_proj = Linear(cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim, ("q_lora", "heads"), **kw)
    self.weights_proj = Linear(cfg.hidden_size, cfg.index_n_heads, ("embed", None), **kw)
    self.inv_freq = inv_freq

  def scores(self, x_BTD, q_residual_BTQ, q_pos_BT, keys_BCI):
    """Indexer scores [B, T, C] in fp32."""
    B, T, _ = x_BTD.shape
    q_BTHI = self.q_b_proj(q_residual_BTQ).reshape(B, T, self.n_heads, self.head_dim)
    q_BTHI = apply_rope(q_BTHI, q_pos_BT, self.inv_freq)
    dots_BTHC = jnp.einsum("bthi,bci->bthc", q_BTHI.astype(jnp.float32), keys_BCI.astype(jnp.float32))
    dots_BTHC = jax.nn.relu(dots_BTHC) * self.head_dim**-0.5
    w_BTH = self.weights_proj(x_BTD).astype(jnp.float32) * self.n_heads**-0.5
    return jnp.einsum("bthc,bth->btc", dots_BTHC, w_BTH)

  def select(self, scores_BTC, q_pos_BT, visible_BTC=None):
    """Mask [B, T, C]: entry chosen among the top-k of the visible entries, and visible.

    `visible_BTC` overrides causal visibility (packed rows add the document mask)."""
    B, T, C = scores_BTC.shape
    visible = compressed_visible(q_pos_BT, C, self.ratio) if visible_BTC is None else visible_BTC
    k = min(self.topk, C)
    if k >= C:
      return visible
    masked = jnp.where(visible, scores_BTC, -jnp.inf)
    _, idx_BTK = jax.lax.top_k(masked, k)
    chosen = jnp.zeros((B, T, C), bool)
    b = jnp.arange(B)[:, None, None]
    t = jnp.arange(T)[None, :, None]
    chosen = chosen.at[b, t, idx_BTK].set(True)
    return chosen & visible
