"""RoPE as Llama/Qwen use it: each head's two halves rotate together (transformers' `rotate_half`), over the
whole head, optionally with Llama 3.1's "llama3" frequency rescaling.

V4's `apply_rope` rotates interleaved (even, odd) pairs of a trailing slice instead; the base frequency table is
the same and is shared (`dsv4.model.rope.inv_frequencies`).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dsv4.model.dense_config import DenseConfig, Llama3RopeScaling
from dsv4.model.rope import inv_frequencies


def llama3_scaled(inv_freq: np.ndarray, s: Llama3RopeScaling) -> np.ndarray:
  """Wavelengths longer than original/low_freq_factor are stretched by `factor`, shorter than
  original/high_freq_factor kept, and those between interpolated by a linear ramp in original/wavelength."""
  inv_freq = inv_freq.astype(np.float32)
  wavelen = np.float32(2 * math.pi) / inv_freq
  low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
  high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
  scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(s.factor), inv_freq).astype(np.float32)
  smooth = ((s.original_max_position_embeddings / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor)).astype(np.float32)
  smoothed = (1 - smooth) * scaled / np.float32(s.factor) + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def dense_inv_frequencies(cfg: DenseConfig) -> tuple[float, ...]:
  """The model's table as a tuple (static and hashable, like V4's layer tables)."""
  table = inv_frequencies(cfg.head_dim, cfg.rope_theta, None)
  if cfg.rope_scaling is not None:
    table = llama3_scaled(table, cfg.rope_scaling)
  return tuple(float(f) for f in table)


def apply_rope_half(x_BTHK, positions_BT, inv_freq):
  """x·cos + rotate_half(x)·sin with the half-split layout, in fp32; x [B, T, H, K], positions [B, T]."""
  angles_BTR = positions_BT.astype(jnp.float32)[..., None] * jnp.asarray(np.asarray(inv_freq, np.float32))
  cos, sin = jnp.cos(angles_BTR)[:, :, None, :], jnp.sin(angles_BTR)[:, :, None, :]
  x = x_BTHK.astype(jnp.float32)
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x_BTHK.dtype)
