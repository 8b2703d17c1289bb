"""KV compression for CSA and HCA layers (and the lightning indexer's keys).

Every `ratio` source tokens close a window that is pooled into one compressed entry:
  entry_w = kv_norm( Σ_slots softmax_slots(gate + position_bias) ⊙ kv ),  then RoPE at position w·ratio.
HCA (ratio 128) pools each window on its own. CSA (ratio 4) *overlaps* windows: each token projects to two
series, Ca = kv[..., :d] and Cb = kv[..., d:]; entry w pools window w−1's Ca with window w's Cb over 2·ratio
slots (width 2m, stride m). Window 0 has no predecessor: its Ca slots get gate −inf (weight 0).

`pool_windows` works on whole windows and takes the predecessor's Ca explicitly, so a decode cache can
call it with the Ca it kept from the last closed window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.layers import Linear, RMSNorm, param
from dsv4.model.rope import apply_rope


class Compressor(nnx.Module):

  def __init__(self, d_model: int, head_dim: int, ratio: int, overlap: bool, eps: float, inv_freq, *, rngs,
               dtype, param_dtype):
    width = 2 * head_dim if overlap else head_dim
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.kv_proj = Linear(d_model, width, ("embed", "kv"), **kw)
    self.gate_proj = Linear(d_model, width, ("embed", "kv"), **kw)
    self.position_bias = param(rngs, (ratio, width), (None, "kv"), jnp.float32, init="zeros")
    self.kv_norm = RMSNorm(head_dim, eps)
    self.head_dim, self.ratio, self.overlap = head_dim, ratio, overlap
    self.inv_freq = inv_freq  # numpy constant, static

  def project(self, x_BSD):
    """Per-token compressor inputs: kv and raw gate, [B, S, width] each."""
    return self.kv_proj(x_BSD), self.gate_proj(x_BSD)

  def pool_windows(self, kv_BNMW, gate_BNMW, first_position, prev_kv_BMd=None, prev_gate_BMd=None,
                   has_prev_BN=None):
    """Pools N closed windows [B, N, ratio, width] into N rotated entries [B, N, d].

    `first_position` (scalar or [B]) is the source position of window 0's first token (entry n sits at
    first_position + n·ratio); an [B, N] array gives every entry's position instead (packed documents).
    For CSA, `prev_*` is the Ca half of the window before window 0 (None: none); `prev_gate_BMd` must
    already include `position_bias` (as the gates of a closed window do). `has_prev_BN` False cuts the
    overlap where a window opens a new document.
    """
    B, N, M, _ = kv_BNMW.shape
    d = self.head_dim
    if N == 0:
      return jnp.zeros((B, 0, d), kv_BNMW.dtype)
    gate_BNMW = gate_BNMW.astype(jnp.float32) + self.position_bias[...]
    if self.overlap:
      ca_kv, cb_kv = kv_BNMW[..., :d], kv_BNMW[..., d:]
      ca_gate, cb_gate = gate_BNMW[..., :d], gate_BNMW[..., d:]
      if prev_kv_BMd is None:
        prev_kv_BMd = jnp.zeros((B, M, d), kv_BNMW.dtype)
        prev_gate_BMd = jnp.full((B, M, d), -jnp.inf, jnp.float32)
      shifted_kv = jnp.concatenate([prev_kv_BMd[:, None].astype(kv_BNMW.dtype), ca_kv[:, :-1]], axis=1)
      shifted_gate = jnp.concatenate([prev_gate_BMd[:, None].astype(jnp.float32), ca_gate[:, :-1]], axis=1)
      if has_prev_BN is not None:
        shifted_gate = jnp.where(has_prev_BN[:, :, None, None], shifted_gate, -jnp.inf)
      kv_BNMW = jnp.concatenate([shifted_kv, cb_kv], axis=2)  # [B, N, 2M, d]
      gate_BNMW = jnp.concatenate([shifted_gate, cb_gate], axis=2)
    weights = jax.nn.softmax(gate_BNMW, axis=2).astype(kv_BNMW.dtype)
    pooled_BNd = self.kv_norm(jnp.sum(kv_BNMW * weights, axis=2))
    first = jnp.asarray(first_position)
    if first.ndim == 2:
      positions_BN = first
    else:  # scalar or per-sequence [B]
      positions_BN = jnp.broadcast_to(first[..., None] + self.ratio * jnp.arange(N), (B, N))
    return apply_rope(pooled_BNd, positions_BN, self.inv_freq)

  def __call__(self, x_BSD, positions_BS=None, segment_ids_BS=None):
    """Whole-sequence compression: entries of every closed window, [B, S // ratio, d].

    Windows are laid out from row slot 0. For packed rows (`segment_ids_BS`, documents starting at multiples
    of the ratio) each entry takes the position of its window's first token and CSA windows do not overlap
    into the previous document; a document then pools exactly as it would alone.
    """
    B, S, _ = x_BSD.shape
    n = S // self.ratio
    kv, gate = self.project(x_BSD[:, :n * self.ratio])
    shape = (B, n, self.ratio, kv.shape[-1])
    first_position, has_prev_BN = 0, None
    if positions_BS is not None:
      first_position = positions_BS[:, :n * self.ratio:self.ratio]
    if segment_ids_BS is not None:
      starts = segment_ids_BS[:, :n * self.ratio:self.ratio]
      ends_before = jnp.concatenate([starts[:, :1], segment_ids_BS[:, self.ratio - 1:n * self.ratio - 1:self.ratio]],
                                    axis=1)
      has_prev_BN = starts == ends_before
    return self.pool_windows(kv.reshape(shape), gate.reshape(shape), first_position, has_prev_BN=has_prev_BN)


def entry_segments(segment_ids_BS, num_entries: int, ratio: int):
  """The document of each compressed entry: that of its window's first slot, [B, C]."""
  return segment_ids_BS[:, :num_entries * ratio:ratio]


def compressed_visible(q_pos_BT, num_entries: int, ratio: int, q_segment_BT=None, entry_segment_BC=None):
  """Entry c is visible to the query at position t once its window has closed: (c + 1)·ratio ≤ t + 1,
  and (packed rows) when it belongs to the query's document."""
  c = jnp.arange(num_entries)
  visible = c[None, None, :] < ((q_pos_BT + 1) // ratio)[..., None]  # [B, T, C]
  if q_segment_BT is not None:
    visible &= q_segment_BT[:, :, None] == entry_segment_BC[:, None, :]
  return visible
