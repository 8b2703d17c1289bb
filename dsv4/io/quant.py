"""Dequantisation of the block formats DeepSeek publishes its weights in (numpy; the same calls work on jax arrays).

Two formats, both `value = element * scale[i // block_rows, j // block_cols]` on a 2-D torch-layout weight
[out, in], with partial blocks at the edges (the grid is ceil(out / rows) × ceil(in / cols)):

- **FP8**: float8 e4m3fn elements, one scale per 128×128 block. The scale is float32 in V3-style HF checkpoints
  (`X.weight_scale_inv`, which despite its name multiplies: README_WEIGHTS "block * scale_inv") and ue8m0 in V4's
  native ones (`X.scale`, quantization_config `scale_fmt: ue8m0`).
- **FP4** (MXFP4, V4 routed experts): e2m1 elements packed two per byte along `in`, one ue8m0 scale per 32
  consecutive `in` elements of a row, so the scale is [out, ceil(in / 32)]. Nibble order: element 2k is the *low*
  nibble of byte k, element 2k+1 the high one. Sources: DeepSeek-V4's own `inference/convert.py`
  (`cast_e2m1fn_to_e4m3fn`: `stack([table[x & 0x0F], table[x >> 4]], -1)` on the int8 weight; the same code is
  copied into SGLang's DSV4 FP4 path and radixark/miles `tools/convert_mxfp4_to_fp8.py`), and torch's
  `float4_e2m1fn_x2` (torch's `onnx/_internal/exporter/_type_casting.py::unpack_float4x2_as_uint8` and
  `testing/_internal/common_quantized.py::pack_uint4` put element 0 in the low nibble). safetensors' `F4` dtype
  stores torch's bytes as they are; its docs do not state a nibble order, so F4 files follow torch's by assumption.

Element formats (OCP MX / IEEE-like, no infinities): e4m3fn = 1 sign, 4 exponent (bias 7), 3 mantissa bits,
subnormals at exponent 0, S.1111.111 is NaN, max 448. e2m1 = 1 sign, 2 exponent (bias 1), 1 mantissa bit:
{0, .5, 1, 1.5, 2, 3, 4, 6} and negatives. ue8m0 = 8 exponent bits, value 2^(e - 127), 0xFF is NaN.

Products are computed in float32: element × scale is exact in float64 (4 × 24 significant bits), so the float32
product is that exact value rounded once, and casting it to bf16 equals casting the float64 product (ml_dtypes and
jax both go float64 → float32 → bf16).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockFormat:
  name: str
  block: tuple[int, int]   # elements sharing one scale along (out, in)
  per_byte: int            # elements stored per byte along `in`


FP8 = BlockFormat("fp8_e4m3", (128, 128), 1)
FP4 = BlockFormat("fp4_e2m1", (1, 32), 2)

# e2m1 nibble -> value; index bit 3 is the sign.
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                       np.float32)


def _xp(x):
  return jnp if isinstance(x, jax.Array) else np


def scale_grid(fmt: BlockFormat, shape: tuple[int, ...]) -> tuple[int, int]:
  """The scale tensor's shape for a weight of logical `shape` [out, in]."""
  (rows, cols), (br, bc) = shape, fmt.block
  return (-(-rows // br), -(-cols // bc))


def decode_e4m3(x):
  """float8_e4m3fn (or its uint8 bit patterns) -> float32."""
  xp = _xp(x)
  if x.dtype == xp.uint8:
    x = x.view(ml_dtypes.float8_e4m3fn) if xp is np else jax.lax.bitcast_convert_type(x, jnp.float8_e4m3fn)
  return x.astype(xp.float32)


def decode_e8m0(x):
  """float8_e8m0fnu (or its uint8 exponent bytes) -> float32 2^(e - 127); 0xFF -> NaN."""
  xp = _xp(x)
  if x.dtype == xp.uint8:
    x = x.view(ml_dtypes.float8_e8m0fnu) if xp is np else jax.lax.bitcast_convert_type(x, jnp.float8_e8m0fnu)
  return x.astype(xp.float32)


def decode_scale(s):
  """A scale tensor in whatever dtype it was stored (ue8m0 or a float type) -> float32."""
  if s.dtype == ml_dtypes.float8_e8m0fnu:
    return decode_e8m0(s)
  return s.astype(_xp(s).float32)


def unpack_e2m1(packed):
  """uint8 [..., n] holding two e2m1 codes per byte -> float32 [..., 2n], low nibble first."""
  xp = _xp(packed)
  b = packed.view(xp.uint8) if xp is np else jax.lax.bitcast_convert_type(packed, jnp.uint8)
  codes = xp.stack([b & 0x0F, b >> 4], axis=-1).reshape(*b.shape[:-1], 2 * b.shape[-1])
  return xp.asarray(E2M1_VALUES)[codes.astype(xp.int32)]


def apply_scales(values, scale, fmt: BlockFormat, origin: tuple[int, int] = (0, 0)):
  """values [R, C] (float32, elements origin..origin+(R, C) of the weight) × their block scales.

  `scale` is float32 and starts at the block holding `origin`, i.e. it is scale_full[origin // block:, ...]
  (at least as far as the blocks the slice touches), so a slice that starts mid-block reads whole blocks.
  """
  xp = _xp(values)
  (r0, c0), (br, bc) = origin, fmt.block
  rows = (r0 + xp.arange(values.shape[0])) // br - r0 // br
  cols = (c0 + xp.arange(values.shape[1])) // bc - c0 // bc
  return values * xp.take(xp.take(scale, rows, axis=0), cols, axis=1)


def dequantize_fp8(w, scale, origin: tuple[int, int] = (0, 0)):
  """e4m3 weight (slice) [R, C] with its 128×128 block scales -> float32."""
  return apply_scales(decode_e4m3(w), decode_scale(scale), FP8, origin)


def dequantize_fp4(packed, scale, origin: tuple[int, int] = (0, 0)):
  """Packed e2m1 weight (slice) [R, C/2] bytes with its per-32 ue8m0 scales -> float32 [R, C]."""
  return apply_scales(unpack_e2m1(packed), decode_scale(scale), FP4, origin)
