"""Test-side references for the block formats, written from the format definitions (not from dsv4.io.quant):
float64 decoders of e4m3fn / e2m1 / ue8m0 bit patterns, block dequantisation by explicit element → block index,
quantizers that produce checkpoints, and a safetensors writer for dtypes numpy cannot name (F4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import TensorSpec, serialize_file


def e4m3_value(bits: int) -> float:
  """1 sign, 4 exponent (bias 7), 3 mantissa bits; exponent 0 is subnormal; S.1111.111 is NaN (no infinities)."""
  sign = -1.0 if bits & 0x80 else 1.0
  e, m = (bits >> 3) & 0xF, bits & 0x7
  if e == 0xF and m == 0x7:
    return math.nan
  if e == 0:
    return sign * (m / 8) * 2.0 ** (1 - 7)
  return sign * (1 + m / 8) * 2.0 ** (e - 7)


def e2m1_value(code: int) -> float:
  """1 sign, 2 exponent (bias 1), 1 mantissa bit; exponent 0 is subnormal (0 or 0.5)."""
  sign = -1.0 if code & 0x8 else 1.0
  e, m = (code >> 1) & 0x3, code & 0x1
  if e == 0:
    return sign * (m / 2) * 2.0 ** (1 - 1)
  return sign * (1 + m / 2) * 2.0 ** (e - 1)


def e8m0_value(bits: int) -> float:
  return math.nan if bits == 0xFF else 2.0 ** (bits - 127)


def fp8_elements(bits_u8: np.ndarray) -> np.ndarray:
  return np.vectorize(e4m3_value, otypes=[np.float64])(bits_u8.astype(np.int64))


def fp4_elements(packed_u8: np.ndarray, low_first: bool = True) -> np.ndarray:
  """[R, C/2] bytes -> [R, C] float64; element j is nibble j % 2 of byte j // 2 (low nibble first)."""
  R, nb = packed_u8.shape
  j = np.arange(2 * nb)
  shift = 4 * (j % 2) if low_first else 4 * (1 - j % 2)
  codes = (packed_u8[:, j // 2].astype(np.int64) >> shift[None, :]) & 0xF
  return np.vectorize(e2m1_value, otypes=[np.float64])(codes)


def scale_values(scale: np.ndarray) -> np.ndarray:
  if scale.dtype == ml_dtypes.float8_e8m0fnu:
    return np.vectorize(e8m0_value, otypes=[np.float64])(scale.view(np.uint8).astype(np.int64))
  return scale.astype(np.float64)


def blockwise(elements: np.ndarray, scales: np.ndarray, block: tuple[int, int]) -> np.ndarray:
  """out[i, j] = elements[i, j] * scales[i // block[0], j // block[1]], in float64."""
  i = np.arange(elements.shape[0])[:, None] // block[0]
  j = np.arange(elements.shape[1])[None, :] // block[1]
  return elements * scales[i, j]


# --- quantizers (only need to be valid encodings; the loader is checked against the float64 decode) -----------

E2M1_CODES = np.array([e2m1_value(c) for c in range(16)])


def _e8m0_covering(amax: np.ndarray, top: float) -> np.ndarray:
  """The smallest power-of-two scale with amax / scale <= top, as e8m0 bytes."""
  e = np.ceil(np.log2(np.maximum(amax, 1e-30) / top)) + 127
  return np.clip(e, 1, 254).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)


def quantize_fp8(w: np.ndarray, scale_kind: str) -> tuple[np.ndarray, np.ndarray]:
  """[R, C] -> (e4m3 [R, C], scale [ceil(R/128), ceil(C/128)] as e8m0 or float32 `weight_scale_inv`)."""
  R, C = w.shape
  gr, gc = -(-R // 128), -(-C // 128)
  amax = np.zeros((gr, gc))
  for a in range(gr):
    for b in range(gc):
      amax[a, b] = np.abs(w[128 * a:128 * (a + 1), 128 * b:128 * (b + 1)]).max()
  scale = _e8m0_covering(amax, 448.0) if scale_kind == "e8m0" else (np.maximum(amax, 1e-30) / 448).astype(np.float32)
  s = blockwise(np.ones_like(w, np.float64), scale_values(scale), (128, 128))
  return (w / s).astype(ml_dtypes.float8_e4m3fn), scale


def quantize_fp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[R, C] (C even) -> (int8 [R, C/2] packed, low nibble = even element; e8m0 scale [R, ceil(C/32)])."""
  R, C = w.shape
  g = -(-C // 32)
  amax = np.array([[np.abs(w[r, 32 * b:32 * (b + 1)]).max() for b in range(g)] for r in range(R)])
  scale = _e8m0_covering(amax, 6.0)
  x = w / blockwise(np.ones_like(w, np.float64), scale_values(scale), (1, 32))
  codes = np.abs(x[..., None] - E2M1_CODES).argmin(-1).astype(np.uint8)
  return (codes[:, 0::2] | (codes[:, 1::2] << 4)).view(np.int8), scale


class F4:
  """A packed uint8 array to be written with safetensors' F4 dtype (header shape = logical, last dim doubled)."""

  def __init__(self, packed: np.ndarray):
    self.packed = np.ascontiguousarray(packed.view(np.uint8))


def save(tensors: dict, path: Path, n_files: int = 1) -> None:
  """Writes np arrays (any dtype numpy/ml_dtypes can name) and F4 tensors as `n_files` shards (+ index)."""
  names = list(tensors)
  groups = [names[i::n_files] for i in range(n_files)]
  files = ["model.safetensors"] if n_files == 1 else [f"model-{i + 1:05d}-of-{n_files:05d}.safetensors"
                                                      for i in range(n_files)]
  for group, fname in zip(groups, files, strict=True):
    specs, alive = {}, []
    for n in group:
      t = tensors[n]
      arr, dtype = (t.packed, "float4_e2m1fn_x2") if isinstance(t, F4) else (np.ascontiguousarray(t), t.dtype.name)
      alive.append(arr)
      specs[n] = TensorSpec(dtype=dtype, shape=list(arr.shape), data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    serialize_file(specs, str(path / fname), metadata={"format": "pt"})
  if n_files > 1:
    weight_map = {n: f for group, f in zip(groups, files, strict=True) for n in group}
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def write_quantized(native: dict[str, np.ndarray], path: Path, n_files: int = 2, prefix: str = "") -> dict:
  """Writes a model's native float tensors with routed experts in FP4 (int8-packed in even layers, F4 in odd
  ones) and the other 2-D `.weight`s except embed and router in FP8 (ue8m0 `.scale` and float32
  `.weight_scale_inv` alternating). Returns the float64 value each native tensor decodes to."""
  out, ref = {}, {}
  fp8_count = 0
  for name, w in native.items():
    if ".ffn.experts." in name:
      packed, scale = quantize_fp4(w)
      layer = int(name.split(".")[1])
      out[prefix + name] = F4(packed) if layer % 2 else packed
      out[prefix + name[:-len("weight")] + "scale"] = scale
      ref[name] = blockwise(fp4_elements(packed.view(np.uint8)), scale_values(scale), (1, 32))
    elif name.endswith(".weight") and w.ndim == 2 and name not in ("embed.weight",) and ".gate." not in name:
      kind = ("e8m0", "f32")[fp8_count % 2]
      fp8_count += 1
      q, scale = quantize_fp8(w, kind)
      out[prefix + name] = q
      out[prefix + (name[:-len("weight")] + "scale" if kind == "e8m0" else name + "_scale_inv")] = scale
      ref[name] = blockwise(fp8_elements(q.view(np.uint8)), scale_values(scale), (128, 128))
    else:
      out[prefix + name] = w
      ref[name] = w.astype(np.float64) if w.dtype.kind == "f" else w
  save(out, path, n_files)
  return ref


def tiny_config(**overrides):
  """A small model whose hidden size (160) spans a full and a partial 128-block, with 4 experts and MTP."""
  from dsv4.model import ModelConfig
  kw = dict(vocab_size=256, hidden_size=160, num_hidden_layers=3, num_attention_heads=2, head_dim=16, q_lora_rank=24,
            qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8, compress_ratios=(4, 128, 0),
            index_n_heads=4, index_head_dim=8, index_topk=3, n_routed_experts=4, num_experts_per_tok=2,
            moe_intermediate_size=16, num_hash_layers=1, hc_mult=2, max_position_embeddings=1024,
            num_nextn_predict_layers=1)
  return ModelConfig(**{**kw, **overrides})


def random_native(cfg, seed: int = 0) -> dict[str, np.ndarray]:
  """Random float32 native tensors for `cfg` (norm weights near 1, valid hash tables); building a model from
  these with hf.model_from_native takes a fraction of a second where an eager Transformer init takes many."""
  from dsv4.io import names as names_lib
  rng = np.random.default_rng(seed)
  out = {}
  for spec in names_lib.specs(cfg):
    for name, shape in zip(spec.names, spec.native_shapes, strict=True):
      if name.endswith("tid2eid"):
        out[name] = np.argsort(rng.random((shape[0], cfg.n_routed_experts)), axis=1)[:, :shape[1]].astype(np.int64)
      elif name.endswith("norm.weight"):
        out[name] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
      else:
        out[name] = (0.05 * rng.standard_normal(shape)).astype(np.float32)
  return out


def write_model_dir(cfg, native: dict[str, np.ndarray], path: Path, **kw) -> dict:
  """config.json + a quantized native-name checkpoint of these tensors; returns write_quantized's float64 decode."""
  from dsv4.io.hf_config import to_hf_dict
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(to_hf_dict(cfg)))
  return write_quantized(native, path, **kw)
