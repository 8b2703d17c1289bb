"""Decode state for the V4 target: static-shape buffers plus per-sequence lengths.

Per layer the state keeps, for every position < max_len, what later queries need from that token:
  kv_BLK             the shared K=V head (normed, rotated)             — sliding-window branch
  comp_kv/gate_BLW   the compressor's per-token projections            — CSA / HCA layers
  index_kv/gate_BLW  the indexer compressor's per-token projections    — CSA layers
and one pooled entry per compression window (comp_BCK, index_BCI). An extend re-pools exactly the windows
that close among its tokens, reading their (and, for CSA, the previous window's) per-token projections.
An entry is visible only once its window has closed, so rollback is just a length change and is exact:
an entry built from rolled-back tokens is invisible until its window closes again, which re-pools it.

Operations (all static-shape, jit-friendly):
  init_state(cfg, batch, max_len)               empty state
  extend(model, state, tokens_BN, n_valid_B)    appends the first n_valid_B[b] of n tokens per row; returns
                                                logits [B, n, V] (and requested hidden states) and the state
  rollback(state, lengths_B)                    shrinks lengths (never grows them)
Prefill of prompts of different lengths is an extend from the empty state with n_valid = prompt lengths.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dsv4.model.attention import Attention, attend
from dsv4.model.compressor import Compressor, compressed_visible
from dsv4.model.config import ModelConfig
from dsv4.model.hyper import stream_mean
from dsv4.model.layers import DTYPES


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
  kv_BLK: jax.Array
  comp_kv_BLW: jax.Array | None = None
  comp_gate_BLW: jax.Array | None = None
  comp_BCK: jax.Array | None = None
  index_kv_BLW: jax.Array | None = None
  index_gate_BLW: jax.Array | None = None
  index_BCI: jax.Array | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DecodeState:
  lengths_B: jax.Array            # int32, tokens committed per sequence
  layers: tuple[LayerCache, ...]

  @property
  def max_len(self) -> int:
    return self.layers[0].kv_BLK.shape[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ExtendOutput:
  logits_BNV: jax.Array                # float32
  final_hidden_BND: jax.Array
  taps_BNLD: jax.Array | None = None   # mean over mHC streams, like TargetOutput.taps_BTLD
  streams_BNHD: jax.Array | None = None


def buffer_length(cfg: ModelConfig, max_len: int) -> int:
  """max_len rounded up to whole compression windows, so entries are a reshape of the token buffer."""
  unit = max(cfg.compress_ratios) or 1
  return -(-max_len // unit) * unit


def init_state(cfg: ModelConfig, batch: int, max_len: int) -> DecodeState:
  L = buffer_length(cfg, max_len)
  dtype = DTYPES[cfg.dtype]
  layers = []
  for ratio in cfg.compress_ratios:
    z = lambda width: jnp.zeros((batch, L, width), dtype)  # noqa: E731
    cache = LayerCache(kv_BLK=z(cfg.head_dim))
    if ratio:
      width = cfg.head_dim * (2 if ratio == 4 else 1)
      cache.comp_kv_BLW, cache.comp_gate_BLW = z(width), z(width)
      cache.comp_BCK = jnp.zeros((batch, L // ratio, cfg.head_dim), dtype)
    if ratio == 4:
      cache.index_kv_BLW, cache.index_gate_BLW = z(2 * cfg.index_head_dim), z(2 * cfg.index_head_dim)
      cache.index_BCI = jnp.zeros((batch, L // ratio, cfg.index_head_dim), dtype)
    layers.append(cache)
  return DecodeState(lengths_B=jnp.zeros((batch,), jnp.int32), layers=tuple(layers))


def rollback(state: DecodeState, lengths_B) -> DecodeState:
  """Forget tokens at positions ≥ lengths_B (clipped so a length never grows)."""
  return dataclasses.replace(state, lengths_B=jnp.minimum(state.lengths_B, jnp.asarray(lengths_B, jnp.int32)))


def _write(buf_BLX, new_BNX, pos_BN, valid_BN):
  """Scatter new rows at their positions; invalid rows (and anything past the buffer) are dropped."""
  L = buf_BLX.shape[1]
  idx = jnp.where(valid_BN, pos_BN, L)
  b = jnp.arange(buf_BLX.shape[0])[:, None]
  return buf_BLX.at[b, idx].set(new_BNX.astype(buf_BLX.dtype), mode="drop")


def _update_entries(comp: Compressor, kv_BLW, gate_BLW, entries_BCd, old_len_B, n: int):
  """Re-pools the windows c0 = old_len // ratio … c0 + n // ratio: every window that can close among n new tokens.

  Windows still open get provisional entries; they stay invisible and are re-pooled when they close. For CSA
  the slice starts one window early so each re-pooled entry sees its predecessor's Ca half.
  """
  B, _, W = kv_BLW.shape
  m, K = comp.ratio, n // comp.ratio + 1
  c0_B = old_len_B // m
  start_B = jnp.maximum(c0_B - 1, 0)
  tok_BT = start_B[:, None] * m + jnp.arange((K + 1) * m)[None, :]
  take = lambda buf: jnp.take_along_axis(buf, tok_BT[..., None], axis=1, mode="fill", fill_value=0)  # noqa: E731
  shape = (B, K + 1, m, W)
  pooled_BJd = comp.pool_windows(take(kv_BLW).reshape(shape), take(gate_BLW).reshape(shape), start_B * m)
  # Window `start` has no predecessor in the slice: skip it unless it is window 0 (which has none anyway).
  skip_B = (c0_B > 0).astype(jnp.int32)
  new_BKd = jax.vmap(lambda p, o: jax.lax.dynamic_slice_in_dim(p, o, K, axis=0))(pooled_BJd, skip_B)
  win_BK = c0_B[:, None] + jnp.arange(K)[None, :]
  return entries_BCd.at[jnp.arange(B)[:, None], win_BK].set(new_BKd.astype(entries_BCd.dtype), mode="drop")


def _local_window(kv_BLK, first_pos_B, size: int):
  """kv rows [first_pos, first_pos + size) per sequence (start clamped into the buffer) and their positions."""
  L = kv_BLK.shape[1]
  size = min(size, L)
  start_B = jnp.clip(first_pos_B, 0, L - size)
  rows = jax.vmap(lambda kv, s: jax.lax.dynamic_slice_in_dim(kv, s, size, axis=0))(kv_BLK, start_B)
  return rows, start_B[:, None] + jnp.arange(size, dtype=jnp.int32)[None, :]


def attention_extend(attn: Attention, x_BND, pos_BN, valid_BN, new_len_B, cache: LayerCache):
  """One attention layer over n new tokens; returns (output [B, n, D], updated cache)."""
  N = x_BND.shape[1]
  old_len_B = pos_BN[:, 0]
  q_BNHK, q_residual = attn.queries(x_BND, pos_BN)
  cache = dataclasses.replace(cache, kv_BLK=_write(cache.kv_BLK, attn.keys(x_BND, pos_BN), pos_BN, valid_BN))
  # Keys any of the n queries can see: positions (pos₀ − window, pos₀ + n).
  kv_BSK, kv_pos_BS = _local_window(cache.kv_BLK, pos_BN[:, 0] - attn.window + 1, attn.window + N - 1)
  kv_valid_BS = kv_pos_BS < new_len_B[:, None]
  comp_BCK = comp_mask = None
  if attn.compressor is not None:
    kv_new, gate_new = attn.compressor.project(x_BND)
    cache = dataclasses.replace(cache, comp_kv_BLW=_write(cache.comp_kv_BLW, kv_new, pos_BN, valid_BN),
                                comp_gate_BLW=_write(cache.comp_gate_BLW, gate_new, pos_BN, valid_BN))
    comp_BCK = _update_entries(attn.compressor, cache.comp_kv_BLW, cache.comp_gate_BLW, cache.comp_BCK, old_len_B, N)
    cache = dataclasses.replace(cache, comp_BCK=comp_BCK)
    if attn.indexer is not None:
      ikv, igate = attn.indexer.compressor.project(x_BND)
      cache = dataclasses.replace(cache, index_kv_BLW=_write(cache.index_kv_BLW, ikv, pos_BN, valid_BN),
                                  index_gate_BLW=_write(cache.index_gate_BLW, igate, pos_BN, valid_BN))
      keys_BCI = _update_entries(attn.indexer.compressor, cache.index_kv_BLW, cache.index_gate_BLW, cache.index_BCI,
                                 old_len_B, N)
      cache = dataclasses.replace(cache, index_BCI=keys_BCI)
      comp_mask = attn.indexer.select(attn.indexer.scores(x_BND, q_residual, pos_BN, keys_BCI), pos_BN)
    else:
      comp_mask = compressed_visible(pos_BN, comp_BCK.shape[1], attn.ratio)
  o = attend(q_BNHK, kv_BSK, pos_BN, kv_pos_BS, kv_valid_BS, attn.window, attn.sinks[...], attn.head_dim**-0.5,
             comp_BCK, comp_mask)
  return attn.output(o, pos_BN), cache


def extend(model, state: DecodeState, tokens_BN, n_valid_B=None, tap_layers: tuple[int, ...] = ()):
  """Appends tokens_BN[b, :n_valid_B[b]] to each sequence (all n when n_valid_B is None).

  Returns (ExtendOutput, new state). Outputs at invalid slots are computed but meaningless.
  """
  B, N = tokens_BN.shape
  n_valid_B = jnp.full((B,), N, jnp.int32) if n_valid_B is None else jnp.asarray(n_valid_B, jnp.int32)
  pos_BN = state.lengths_B[:, None] + jnp.arange(N, dtype=jnp.int32)[None, :]
  valid_BN = jnp.arange(N)[None, :] < n_valid_B[:, None]
  new_len_B = state.lengths_B + n_valid_B
  cfg = model.config
  streams = jnp.broadcast_to(model.embed_tokens(tokens_BN)[:, :, None, :], (B, N, cfg.hc_mult, cfg.hidden_size))
  caches, taps = [], {}
  for i, (layer, cache) in enumerate(zip(model.layers, state.layers, strict=True)):
    def cached_attention(x_BND, attn=layer.attn, cache=cache):
      out, new_cache = attention_extend(attn, x_BND, pos_BN, valid_BN, new_len_B, cache)
      caches.append(new_cache)
      return out

    streams, _ = layer(streams, tokens_BN, attention=cached_attention)
    if i in tap_layers:
      taps[i] = stream_mean(streams)
  final = model.norm(model.hc_head(streams))
  out = ExtendOutput(logits_BNV=model.head(final), final_hidden_BND=final, streams_BNHD=streams,
                     taps_BNLD=jnp.stack([taps[i] for i in tap_layers], axis=2) if tap_layers else None)
  return out, DecodeState(lengths_B=new_len_B, layers=tuple(caches))
