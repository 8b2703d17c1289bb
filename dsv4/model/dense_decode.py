"""Decode state of the dense family: per layer a static K/V buffer [B, max_len, J, K] plus per-sequence lengths.

An extend of n tokens writes their rotated keys and values at positions lengths … lengths + n − 1 and attends
over the whole buffer with the mask key_pos ≤ query_pos and key_pos < new length. Every position below the new
length was written by a token still committed, so rollback (`dsv4.model.decode.rollback`, which only lowers
`lengths_B`) is exact: rows past the length are never read and are overwritten by the next extend.

  init_state(cfg, batch, max_len)                     empty state
  extend(model, state, tokens_BN, n_valid_B, taps)    (ExtendOutput, new state); row b commits its first
                                                      n_valid_B[b] tokens (outputs past them are meaningless)
Writes past max_len are dropped: callers size max_len for prompt + generated + one verification block.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dsv4.model.decode import ExtendOutput
from dsv4.model.dense_attention import attend_gqa
from dsv4.model.dense_config import DenseConfig
from dsv4.model.layers import DTYPES


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  k_BSJK: jax.Array   # rotated keys at their positions
  v_BSJK: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DenseState:
  lengths_B: jax.Array            # int32, tokens committed per sequence
  layers: tuple[KVCache, ...]

  @property
  def max_len(self) -> int:
    return self.layers[0].k_BSJK.shape[1]


def init_state(cfg: DenseConfig, batch: int, max_len: int) -> DenseState:
  if max_len <= 0:
    raise ValueError(f"max_len must be positive, got {max_len}.")
  shape = (batch, max_len, cfg.num_key_value_heads, cfg.head_dim)
  dtype = DTYPES[cfg.dtype]
  layers = tuple(KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.num_hidden_layers))
  return DenseState(lengths_B=jnp.zeros((batch,), jnp.int32), layers=layers)


def _write(buf_BSX, new_BNX, pos_BN, valid_BN):
  """Scatter rows at their positions; invalid rows and positions past the buffer are dropped."""
  S = buf_BSX.shape[1]
  idx_BN = jnp.where(valid_BN, pos_BN, S)
  b = jnp.arange(buf_BSX.shape[0])[:, None]
  return buf_BSX.at[b, idx_BN].set(new_BNX.astype(buf_BSX.dtype), mode="drop")


def extend(model, state: DenseState, tokens_BN, n_valid_B=None, tap_layers: tuple[int, ...] = ()):
  """Appends tokens_BN[b, :n_valid_B[b]] to each sequence (all n when n_valid_B is None)."""
  B, N = tokens_BN.shape
  n_valid_B = jnp.full((B,), N, jnp.int32) if n_valid_B is None else jnp.asarray(n_valid_B, jnp.int32)
  pos_BN = state.lengths_B[:, None] + jnp.arange(N, dtype=jnp.int32)[None, :]
  valid_BN = jnp.arange(N)[None, :] < n_valid_B[:, None]
  new_len_B = state.lengths_B + n_valid_B
  key_pos_S = jnp.arange(state.max_len, dtype=jnp.int32)
  mask_BNS = (key_pos_S[None, None, :] <= pos_BN[:, :, None]) & (key_pos_S[None, None, :] < new_len_B[:, None, None])
  h = model.embed_tokens(tokens_BN)
  caches, taps = [], {}
  for i, (layer, cache) in enumerate(zip(model.layers, state.layers, strict=True)):
    def cached_attention(x_BND, attn=layer.self_attn, cache=cache):
      q, k, v = attn.qkv(x_BND, pos_BN)
      new = KVCache(_write(cache.k_BSJK, k, pos_BN, valid_BN), _write(cache.v_BSJK, v, pos_BN, valid_BN))
      caches.append(new)
      return attn.output(attend_gqa(q, new.k_BSJK, new.v_BSJK, mask_BNS))

    h = layer(h, cached_attention)
    if i in tap_layers:
      taps[i] = h
  final = model.norm(h)
  out = ExtendOutput(logits_BNV=model.head(final), final_hidden_BND=final,
                     taps_BNLD=jnp.stack([taps[i] for i in tap_layers], axis=2) if tap_layers else None)
  return out, DenseState(lengths_B=new_len_B, layers=tuple(caches))
