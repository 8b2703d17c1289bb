"""Rotary position embedding as V4 uses it: interleaved pairs on the *last* `rope_dim` channels.

Two frequency tables: sliding-window layers use plain RoPE with `rope_theta`; CSA/HCA layers (and their
compressors and indexer) use `compress_rope_theta` with YaRN. YaRN's attention factor is 1 in V4 (the
cos/sin are not rescaled).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dsv4.model.config import ModelConfig, YarnConfig


def inv_frequencies(rope_dim: int, theta: float, yarn: YarnConfig | None = None) -> np.ndarray:
  """One inverse frequency per rotated pair, float32 [rope_dim // 2]."""
  exponents = np.arange(0, rope_dim, 2, dtype=np.float32) / rope_dim
  pos_freqs = np.float32(theta) ** exponents
  inv_extrap = (1.0 / pos_freqs).astype(np.float32)
  if yarn is None:
    return inv_extrap
  inv_interp = (1.0 / (np.float32(yarn.factor) * pos_freqs)).astype(np.float32)

  def correction_dim(num_rotations):
    return rope_dim * math.log(yarn.original_max_position_embeddings / (num_rotations * 2 * math.pi)) / (
        2 * math.log(theta))

  low = max(math.floor(correction_dim(yarn.beta_fast)), 0)
  high = min(math.ceil(correction_dim(yarn.beta_slow)), rope_dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(rope_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
  extrap_weight = 1 - ramp  # 1 → keep the original frequency (high-frequency pairs)
  return (inv_interp * (1 - extrap_weight) + inv_extrap * extrap_weight).astype(np.float32)


def layer_inv_frequencies(cfg: ModelConfig, compressed: bool) -> tuple[float, ...]:
  """The table a layer kind uses, as a tuple so modules keep it as static (hashable, not a parameter)."""
  if compressed:
    table = inv_frequencies(cfg.qk_rope_head_dim, cfg.compress_rope_theta, cfg.yarn)
  else:
    table = inv_frequencies(cfg.qk_rope_head_dim, cfg.rope_theta, None)
  return tuple(float(f) for f in table)


def apply_rope(x_BTHD, positions_BT, inv_freq, inverse: bool = False):
  """Rotates the last 2·len(inv_freq) channels of x as interleaved (even, odd) pairs, in fp32.

  x: [..., T, H, D] with positions [..., T] (heads axis present) or [..., T, D] with positions [..., T]
  when `x.ndim == positions.ndim + 1`. `inverse` rotates by −angle (V4 de-rotates the attention output).
  """
  inv_freq = np.asarray(inv_freq, np.float32)
  rope_dim = 2 * inv_freq.shape[0]
  angles = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [..., T, R/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  if inverse:
    sin = -sin
  if x_BTHD.ndim == positions_BT.ndim + 2:  # a heads axis sits between T and D
    cos, sin = cos[..., None, :], sin[..., None, :]
  nope, rope = x_BTHD[..., :-rope_dim], x_BTHD[..., -rope_dim:]
  r = rope.astype(jnp.float32)
  even, odd = r[..., 0::2], r[..., 1::2]
  rot_even = even * cos - odd * sin
  rot_odd = odd * cos + even * sin
  rotated = jnp.stack([rot_even, rot_odd], axis=-1).reshape(r.shape).astype(x_BTHD.dtype)
  return jnp.concatenate([nope, rotated], axis=-1)
