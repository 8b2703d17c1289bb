"""Grouped-query softmax attention of the dense family, shared by the full forward and cached decode."""

from __future__ import annotations

import jax
import jax.numpy as jnp

NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # masked score: finite, so a row with no visible key stays finite


def attend_gqa(q_BTHK, k_BSJK, v_BSJK, mask_BTS):
  """Softmax attention in fp32 with KV head j serving query heads j·G … j·G + G − 1. Returns [B, T, H, K]."""
  B, T, H, K = q_BTHK.shape
  J = k_BSJK.shape[2]
  q = q_BTHK.astype(jnp.float32).reshape(B, T, J, H // J, K)
  scores = jnp.einsum("btjgk,bsjk->bjgts", q, k_BSJK.astype(jnp.float32)) * K**-0.5
  probs = jax.nn.softmax(jnp.where(mask_BTS[:, None, None], scores, NEG), axis=-1)
  out = jnp.einsum("bjgts,bsjk->btjgk", probs, v_BSJK.astype(jnp.float32))
  return out.reshape(B, T, H, K).astype(q_BTHK.dtype)
