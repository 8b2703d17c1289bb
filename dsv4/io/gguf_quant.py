"""Vectorised numpy dequantisation of ggml tensor types (the block formats llama.cpp writes into GGUF files).

Each quantised type stores a tensor's rows as fixed-size blocks of `block_size` values. A block is a small record
(scales as float16, then packed integer codes), so the raw bytes are viewed as an array of numpy structured records
and every block of a tensor is decoded at once, with no per-block Python loop. The layouts follow ggml's
`block_q4_0`, `block_q4_1`, `block_q8_0`, `block_q4_K` and `block_q6_K`:

- Q8_0 (32 values): d:f16, q:int8[32];                   x = d·q
- Q4_0 (32 values): d:f16, q:u8[16] (two 4-bit codes);   x = d·(q − 8); low nibbles are values 0..15, high 16..31
- Q4_1 (32 values): d:f16, m:f16, q:u8[16];              x = d·q + m
- Q4_K (256 values, 8 sub-blocks of 32): d, dmin:f16, 12 bytes of packed 6-bit (scale, min) pairs, q:u8[128];
  x = d·scale_j·q − dmin·min_j; each 32 bytes of q hold two sub-blocks (low nibbles, then high nibbles)
- Q6_K (256 values, 16 sub-blocks of 16): ql:u8[128] (low 4 bits), qh:u8[64] (high 2 bits), scales:int8[16], d:f16;
  x = d·scale_j·(q − 32)
"""

from __future__ import annotations

import numpy as np

# ggml type ids (ggml.h `enum ggml_type`)
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 12, 14, 30
TYPE_NAMES = {F32: "F32", F16: "F16", Q4_0: "Q4_0", Q4_1: "Q4_1", Q8_0: "Q8_0", Q4_K: "Q4_K", Q6_K: "Q6_K",
              BF16: "BF16"}
QK_K = 256

_BLOCKS = {
    Q8_0: np.dtype([("d", "<f2"), ("q", "i1", 32)]),
    Q4_0: np.dtype([("d", "<f2"), ("q", "u1", 16)]),
    Q4_1: np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)]),
    Q4_K: np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", 12), ("q", "u1", QK_K // 2)]),
    Q6_K: np.dtype([("ql", "u1", QK_K // 2), ("qh", "u1", QK_K // 4), ("scales", "i1", QK_K // 16), ("d", "<f2")]),
}
_PLAIN = {F32: np.dtype("<f4"), F16: np.dtype("<f2"), BF16: np.dtype("<u2")}
BLOCK_VALUES = {F32: 1, F16: 1, BF16: 1, Q8_0: 32, Q4_0: 32, Q4_1: 32, Q4_K: QK_K, Q6_K: QK_K}
SUPPORTED = frozenset(BLOCK_VALUES)


def block_bytes(qtype: int) -> int:
  """Bytes of one block (one value for the plain float types)."""
  return (_PLAIN.get(qtype) or _BLOCKS[qtype]).itemsize


def nbytes(qtype: int, n_values: int) -> int:
  return n_values // BLOCK_VALUES[qtype] * block_bytes(qtype)


def _nibbles(q_NB: np.ndarray) -> np.ndarray:
  """[N, B] bytes → [N, 2B] 4-bit codes: all low nibbles first, then all high nibbles (ggml's order)."""
  return np.concatenate([q_NB & 0x0F, q_NB >> 4], axis=-1)


def _q4k_scales_mins(s_N12: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Unpacks Q4_K's 12 bytes into 8 six-bit scales and 8 six-bit mins.

  Sub-blocks 0..3 keep scale and min in the low 6 bits of bytes 0..3 and 4..7. Sub-blocks 4..7 take their low
  4 bits from bytes 8..11 (scale: low nibble, min: high nibble) and their top 2 bits from the spare top bits
  of bytes 0..3 (scale) and 4..7 (min).
  """
  lo_s, lo_m, hi = s_N12[:, 0:4], s_N12[:, 4:8], s_N12[:, 8:12]
  scales = np.concatenate([lo_s & 63, (hi & 0x0F) | ((lo_s >> 6) << 4)], axis=-1)
  mins = np.concatenate([lo_m & 63, (hi >> 4) | ((lo_m >> 6) << 4)], axis=-1)
  return scales.astype(np.float32), mins.astype(np.float32)


def _q6k(b) -> np.ndarray:
  """Each 128-value half uses 64 bytes of ql and 32 of qh: value l + 32·k (k = 0..3) takes the k-th 2-bit field
  of qh[l] as its top bits and, as low bits, the low (k even) or high (k odd) nibble of ql[l + 32·(k mod 2)]."""
  n = b.shape[0]
  ql_NH64 = b["ql"].reshape(n, 2, 64)
  qh_NH32 = b["qh"].reshape(n, 2, 32)
  lo_NH4_32 = np.stack([ql_NH64[..., :32] & 0x0F, ql_NH64[..., 32:] & 0x0F, ql_NH64[..., :32] >> 4,
                        ql_NH64[..., 32:] >> 4], axis=2)
  hi_NH4_32 = np.stack([(qh_NH32 >> s) & 3 for s in (0, 2, 4, 6)], axis=2)
  q_N16_16 = ((lo_NH4_32 | (hi_NH4_32 << 4)).astype(np.int16) - 32).reshape(n, 16, 16).astype(np.float32)
  d_N16 = b["d"].astype(np.float32)[:, None] * b["scales"].astype(np.float32)
  return (d_N16[:, :, None] * q_N16_16).reshape(n, QK_K)


def _q4k(b) -> np.ndarray:
  n = b.shape[0]
  scales_N8, mins_N8 = _q4k_scales_mins(b["scales"])
  d_N8 = b["d"].astype(np.float32)[:, None] * scales_N8
  m_N8 = b["dmin"].astype(np.float32)[:, None] * mins_N8
  q_N4_32 = b["q"].reshape(n, 4, 32)
  q_N8_32 = np.stack([q_N4_32 & 0x0F, q_N4_32 >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
  return (d_N8[:, :, None] * q_N8_32 - m_N8[:, :, None]).reshape(n, QK_K)


def dequantize(raw: np.ndarray, qtype: int, n_values: int) -> np.ndarray:
  """Flat float32 values [n_values] from a tensor's raw bytes (any uint8 view of them) of ggml type `qtype`."""
  raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
  if qtype not in SUPPORTED:
    raise ValueError(f"ggml type {qtype} has no dequantiser; supported: {sorted(TYPE_NAMES[t] for t in SUPPORTED)}")
  if n_values % BLOCK_VALUES[qtype]:
    raise ValueError(f"{TYPE_NAMES[qtype]}: {n_values} values is not a whole number of {BLOCK_VALUES[qtype]}-blocks")
  want = nbytes(qtype, n_values)
  if raw.size != want:
    raise ValueError(f"{TYPE_NAMES[qtype]}: {n_values} values need {want} bytes, got {raw.size}")
  if qtype == F32:
    return raw.view("<f4").astype(np.float32)
  if qtype == F16:
    return raw.view("<f2").astype(np.float32)
  if qtype == BF16:  # bf16 is the top half of an f32
    return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
  b = raw.view(_BLOCKS[qtype])
  if qtype == Q8_0:
    out = b["d"].astype(np.float32)[:, None] * b["q"].astype(np.float32)
  elif qtype == Q4_0:
    out = b["d"].astype(np.float32)[:, None] * (_nibbles(b["q"]).astype(np.float32) - 8)
  elif qtype == Q4_1:
    out = b["d"].astype(np.float32)[:, None] * _nibbles(b["q"]).astype(np.float32) + b["m"].astype(np.float32)[:, None]
  elif qtype == Q4_K:
    out = _q4k(b)
  else:
    out = _q6k(b)
  return out.reshape(-1)
