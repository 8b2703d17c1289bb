"""V4 hybrid attention: shared-KV multi-query attention over a sliding window, plus compressed entries.

Per layer kind (`compress_ratios[i]`): 0 = sliding window only; 4 = CSA (overlapping compressor + lightning
indexer keeping `index_topk` entries per query); 128 = HCA (compressor, every closed entry visible).

  q  = rope(rms(q_b(q_a_norm(q_a(x)))))     per-head unweighted RMSNorm, [B, T, H, hd]
  kv = rope(kv_norm(kv_proj(x)))            one head, used as both K and V, [B, S, hd]
  o  = softmax([q·kv_local ; q·kv_comp ; sink_h]) · [kv_local ; kv_comp]   (sink column dropped)
  o  = rope⁻¹(o) at the query position, then grouped low-rank output: o_b(concat_g o_a_g(o_g))

`attend` is written over explicit query/key positions and validity so the decode caches (fixed buffers plus
lengths) reuse it unchanged; the whole-sequence forward passes positions 0..S−1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.compressor import Compressor, compressed_visible, entry_segments
from dsv4.model.config import ModelConfig
from dsv4.model.indexer import Indexer
from dsv4.model.layers import Linear, RMSNorm, param, rms_normalize
from dsv4.model.rope import apply_rope, layer_inv_frequencies


def attend(q_BTHK, kv_BSK, q_pos_BT, kv_pos_BS, kv_valid_BS, window: int, sinks_H, scale: float,
           comp_BCK=None, comp_mask_BTC=None, q_segment_BT=None, kv_segment_BS=None):
  """Softmax attention with a learned per-head sink logit, in fp32. Returns [B, T, H, K] in q's dtype.

  A local key s is visible to query t iff valid, kv_pos ≤ q_pos, kv_pos > q_pos − window and (packed rows)
  both lie in the same document. The sink keeps every softmax row finite, padding rows included.
  """
  q = q_BTHK.astype(jnp.float32)
  local_BHTS = jnp.einsum("bthk,bsk->bhts", q, kv_BSK.astype(jnp.float32)) * scale
  d = q_pos_BT[:, :, None] - kv_pos_BS[:, None, :]
  local_mask_BTS = (d >= 0) & (d < window) & kv_valid_BS[:, None, :]
  if q_segment_BT is not None:
    local_mask_BTS &= q_segment_BT[:, :, None] == kv_segment_BS[:, None, :]
  parts = [jnp.where(local_mask_BTS[:, None], local_BHTS, -jnp.inf)]
  if comp_BCK is not None:
    comp_BHTC = jnp.einsum("bthk,bck->bhtc", q, comp_BCK.astype(jnp.float32)) * scale
    parts.append(jnp.where(comp_mask_BTC[:, None], comp_BHTC, -jnp.inf))
  B, H, T = parts[0].shape[:3]
  parts.append(jnp.broadcast_to(sinks_H.astype(jnp.float32)[None, :, None, None], (B, H, T, 1)))
  probs = jax.nn.softmax(jnp.concatenate(parts, axis=-1), axis=-1)
  S = kv_BSK.shape[1]
  out = jnp.einsum("bhts,bsk->bthk", probs[..., :S], kv_BSK.astype(jnp.float32))
  if comp_BCK is not None:
    out = out + jnp.einsum("bhtc,bck->bthk", probs[..., S:-1], comp_BCK.astype(jnp.float32))
  return out.astype(q_BTHK.dtype)


def attend_rows(q_BTHK, kv_BTK, window: int, sinks_H, scale: float, comp_BCK=None, comp_mask_BTC=None,
                segment_ids_BT=None):
  """`attend` for whole rows (query slot t sees key slots t−window+1..t), in blocks of `window` queries.

  Block i of queries only ever sees key blocks i−1 and i, so scores are [B, H, T, 2·window] rather than
  [B, H, T, T]: linear in T, and no dense [T, T] mask. Compressed entries (T/ratio of them) stay dense.
  """
  B, T, H, K = q_BTHK.shape
  W = window
  if T <= 2 * W:  # nothing to save
    slot_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return attend(q_BTHK, kv_BTK, slot_BT, slot_BT, jnp.ones((B, T), bool), W, sinks_H, scale, comp_BCK,
                  comp_mask_BTC, segment_ids_BT, segment_ids_BT)
  pad = (-T) % W
  N = (T + pad) // W
  seg_BT = jnp.zeros((B, T), jnp.int32) if segment_ids_BT is None else segment_ids_BT
  q = jnp.pad(q_BTHK.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, N, W, H, K)
  kv = jnp.pad(kv_BTK.astype(jnp.float32), ((0, 0), (0, pad), (0, 0))).reshape(B, N, W, K)
  seg = jnp.pad(seg_BT, ((0, 0), (0, pad)), constant_values=-1).reshape(B, N, W)
  shift = lambda x: jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)  # block i−1 (none for 0)
  keys_BNSK = jnp.concatenate([shift(kv), kv], axis=2)  # key slot (i−1)·W + s, s < 2W
  key_seg_BNS = jnp.concatenate([shift(seg), seg], axis=2)
  a, s = jnp.arange(W)[:, None], jnp.arange(2 * W)[None, :]
  in_window_WS = (s > a) & (s <= a + W)  # slot distance (W + a − s) in [0, W)
  first_block_NS = (jnp.arange(N)[:, None] > 0) | (jnp.arange(2 * W)[None, :] >= W)
  mask_BNWS = (in_window_WS[None, None] & first_block_NS[None, :, None, :]
               & (seg[:, :, :, None] == key_seg_BNS[:, :, None, :]))
  local_BNHWS = jnp.einsum("bnwhk,bnsk->bnhws", q, keys_BNSK) * scale
  local_BNHWS = jnp.where(mask_BNWS[:, :, None], local_BNHWS, -jnp.inf)
  local_BHTS = local_BNHWS.transpose(0, 2, 1, 3, 4).reshape(B, H, N * W, 2 * W)[:, :, :T]
  parts = [local_BHTS]
  if comp_BCK is not None:
    comp_BHTC = jnp.einsum("bthk,bck->bhtc", q_BTHK.astype(jnp.float32), comp_BCK.astype(jnp.float32)) * scale
    parts.append(jnp.where(comp_mask_BTC[:, None], comp_BHTC, -jnp.inf))
  parts.append(jnp.broadcast_to(sinks_H.astype(jnp.float32)[None, :, None, None], (B, H, T, 1)))
  probs = jax.nn.softmax(jnp.concatenate(parts, axis=-1), axis=-1)
  probs_local = jnp.pad(probs[..., :2 * W], ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(B, H, N, W, 2 * W)
  out = jnp.einsum("bhnws,bnsk->bnwhk", probs_local, keys_BNSK).reshape(B, N * W, H, K)[:, :T]
  if comp_BCK is not None:
    out = out + jnp.einsum("bhtc,bck->bthk", probs[..., 2 * W:-1], comp_BCK.astype(jnp.float32))
  return out.astype(q_BTHK.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, ratio: int, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    H, hd = cfg.num_attention_heads, cfg.head_dim
    self.num_heads, self.head_dim, self.window, self.ratio = H, hd, cfg.sliding_window, ratio
    self.o_groups, self.eps = cfg.o_groups, cfg.rms_norm_eps
    self.inv_freq = layer_inv_frequencies(cfg, compressed=ratio > 0)
    self.q_a_proj = Linear(cfg.hidden_size, cfg.q_lora_rank, ("embed", "q_lora"), **kw)
    self.q_a_norm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
    self.q_b_proj = Linear(cfg.q_lora_rank, H * hd, ("q_lora", "heads"), **kw)
    self.kv_proj = Linear(cfg.hidden_size, hd, ("embed", "kv"), **kw)
    self.kv_norm = RMSNorm(hd, cfg.rms_norm_eps)
    # Block-diagonal o_a: group g maps its (H/G)·hd inputs to o_lora_rank outputs.
    self.o_a_proj = param(rngs, (cfg.o_groups, H * hd // cfg.o_groups, cfg.o_lora_rank), ("o_groups", "heads",
                                                                                              "o_lora"), param_dtype)
    self.o_b_proj = Linear(cfg.o_groups * cfg.o_lora_rank, cfg.hidden_size, ("o_lora", "embed"), **kw)
    self.sinks = param(rngs, (H,), ("heads",), jnp.float32, init="zeros")
    self.dtype = dtype
    self.compressor = Compressor(cfg.hidden_size, hd, ratio, ratio == 4, cfg.rms_norm_eps, self.inv_freq,
                                 **kw) if ratio else None
    self.indexer = Indexer(cfg, ratio, self.inv_freq, **kw) if ratio == 4 else None

  # --- pieces the decode cache reuses ------------------------------------------------------------
  def queries(self, x_BTD, pos_BT):
    """Rotated, per-head-normalised queries [B, T, H, hd] and the low-rank residual the indexer reads."""
    B, T, _ = x_BTD.shape
    q_residual = self.q_a_norm(self.q_a_proj(x_BTD))
    q = self.q_b_proj(q_residual).reshape(B, T, self.num_heads, self.head_dim)
    q = rms_normalize(q, self.eps).astype(q.dtype)
    return apply_rope(q, pos_BT, self.inv_freq), q_residual

  def keys(self, x_BTD, pos_BT):
    """The single shared K=V head, normalised and rotated: [B, T, hd]."""
    return apply_rope(self.kv_norm(self.kv_proj(x_BTD)), pos_BT, self.inv_freq)

  def output(self, o_BTHK, pos_BT):
    """De-rotate the RoPE slice (V carried it), then the grouped low-rank projection."""
    B, T = o_BTHK.shape[:2]
    o_BTHK = apply_rope(o_BTHK, pos_BT, self.inv_freq, inverse=True)
    o_BTGI = o_BTHK.reshape(B, T, self.o_groups, -1)
    mid_BTGR = jnp.einsum("btgi,gir->btgr", o_BTGI.astype(self.dtype), self.o_a_proj[...].astype(self.dtype))
    return self.o_b_proj(mid_BTGR.reshape(B, T, -1))

  # --- whole-sequence forward --------------------------------------------------------------------
  def __call__(self, x_BTD, positions_BT=None, segment_ids_BT=None):
    """Whole rows (decode uses the cache path). Plain rows are one sequence from position 0.

    Packed rows pass `positions_BT` (RoPE positions, restarting per document) and `segment_ids_BT`; masks
    follow row slots and documents, so documents must start at multiples of the compression ratios for
    their compressed windows to match a lone run (the packer aligns them).
    """
    B, T, _ = x_BTD.shape
    slot_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    pos_BT = slot_BT if positions_BT is None else positions_BT
    q_BTHK, q_residual = self.queries(x_BTD, pos_BT)
    kv_BTK = self.keys(x_BTD, pos_BT)
    comp_BCK = comp_mask = None
    if self.compressor is not None and T >= self.ratio:
      comp_BCK = self.compressor(x_BTD, positions_BT, segment_ids_BT)
      C = comp_BCK.shape[1]
      seg_BC = None if segment_ids_BT is None else entry_segments(segment_ids_BT, C, self.ratio)
      visible = compressed_visible(slot_BT, C, self.ratio, segment_ids_BT, seg_BC)
      if self.indexer is not None:
        index_keys = self.indexer.compressor(x_BTD, positions_BT, segment_ids_BT)
        scores = self.indexer.scores(x_BTD, q_residual, pos_BT, index_keys)
        comp_mask = self.indexer.select(scores, slot_BT, visible)
      else:
        comp_mask = visible
    o = attend_rows(q_BTHK, kv_BTK, self.window, self.sinks[...], self.head_dim**-0.5, comp_BCK, comp_mask,
                    segment_ids_BT)
    return self.output(o, pos_BT)

