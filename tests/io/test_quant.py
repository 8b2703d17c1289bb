"""dsv4.io.quant equals a float64 decode written from the format definitions (tests/io/quant_reference.py): every
e4m3 / e2m1 / e8m0 bit pattern, partial edge blocks, slices that start mid-block; and the references tell the
right nibble order and block index from wrong ones."""

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from dsv4.io import quant
from tests.io import quant_reference as ref

RNG = np.random.default_rng(0)
ALL_BYTES = np.arange(256, dtype=np.uint8)


def finite_e4m3(shape):
  bits = RNG.integers(0, 256, shape).astype(np.uint8)
  return np.where((bits & 0x7F) == 0x7F, 0x38, bits).astype(np.uint8)  # NaN codes -> 1.0


def e8m0(shape, lo=110, hi=140):
  return RNG.integers(lo, hi, shape).astype(np.uint8).view(ml_dtypes.float8_e8m0fnu)


def test_e4m3_every_code():
  want = ref.fp8_elements(ALL_BYTES)
  got = quant.decode_e4m3(ALL_BYTES)
  assert np.isnan(want).sum() == 2 and np.isnan(want[[0x7F, 0xFF]]).all()
  np.testing.assert_array_equal(got, want.astype(np.float32))
  assert want[0x7E] == 448 and want[0x01] == 2.0 ** -9 and want[0x08] == 2.0 ** -6  # max, min subnormal/normal


def test_e8m0_every_code():
  want = np.array([ref.e8m0_value(b) for b in range(256)])
  np.testing.assert_array_equal(quant.decode_e8m0(ALL_BYTES), want.astype(np.float32))
  np.testing.assert_array_equal(quant.decode_scale(ALL_BYTES.view(ml_dtypes.float8_e8m0fnu)), want.astype(np.float32))
  assert want[127] == 1.0 and want[0] == 2.0 ** -127 and np.isnan(want[255])


def test_e2m1_every_byte_low_nibble_first():
  want = ref.fp4_elements(ALL_BYTES[None, :])
  np.testing.assert_array_equal(quant.unpack_e2m1(ALL_BYTES[None, :]), want.astype(np.float32))
  np.testing.assert_array_equal(quant.unpack_e2m1(ALL_BYTES[None, :].view(np.int8)), want.astype(np.float32))
  assert sorted(set(np.abs(want).ravel())) == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
  # The reference can fail: the other nibble order gives a different answer.
  assert not np.array_equal(quant.unpack_e2m1(ALL_BYTES[None, :]), ref.fp4_elements(ALL_BYTES[None, :], False))


@pytest.mark.parametrize("scale_kind", ["e8m0", "float32"])
def test_fp8_partial_edge_blocks(scale_kind):
  bits = finite_e4m3((300, 200))  # 3 × 2 blocks, the last row/column blocks partial (44 rows, 72 columns)
  scale = e8m0((3, 2)) if scale_kind == "e8m0" else RNG.uniform(1e-4, 1e-2, (3, 2)).astype(np.float32)
  want = ref.blockwise(ref.fp8_elements(bits), ref.scale_values(scale), (128, 128))
  got = quant.dequantize_fp8(bits.view(ml_dtypes.float8_e4m3fn), scale)
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want.astype(np.float32))
  np.testing.assert_array_equal(got.astype(ml_dtypes.bfloat16), want.astype(ml_dtypes.bfloat16))
  # The reference can fail: an off-by-one block boundary changes the result.
  shifted = ref.fp8_elements(bits) * ref.scale_values(scale)[
      np.minimum((np.arange(300)[:, None] + 1) // 128, 2), np.arange(200)[None, :] // 128]
  assert not np.array_equal(got, shifted.astype(np.float32))


def test_fp4_partial_edge_blocks():
  packed = RNG.integers(0, 256, (5, 35)).astype(np.uint8)  # 70 elements per row: blocks of 32, 32, 6
  scale = e8m0((5, 3))
  want = ref.blockwise(ref.fp4_elements(packed), ref.scale_values(scale), (1, 32))
  np.testing.assert_array_equal(quant.dequantize_fp4(packed.view(np.int8), scale), want.astype(np.float32))
  assert quant.scale_grid(quant.FP4, (5, 70)) == (5, 3) and quant.scale_grid(quant.FP8, (300, 200)) == (3, 2)


def test_slices_starting_mid_block():
  bits, scale = finite_e4m3((300, 200)), e8m0((3, 2))
  full = quant.dequantize_fp8(bits, scale)
  for r0, r1, c0, c1 in [(0, 300, 0, 200), (100, 260, 130, 131), (127, 129, 5, 199), (256, 300, 128, 200)]:
    sub = scale[r0 // 128:-(-r1 // 128), c0 // 128:-(-c1 // 128)]
    np.testing.assert_array_equal(quant.dequantize_fp8(bits[r0:r1, c0:c1], sub, origin=(r0, c0)),
                                  full[r0:r1, c0:c1])


def test_jax_arrays():
  bits, scale = finite_e4m3((130, 40)), e8m0((2, 1))
  np.testing.assert_array_equal(np.asarray(quant.dequantize_fp8(jnp.asarray(bits), jnp.asarray(scale))),
                                quant.dequantize_fp8(bits, scale))
  packed, s4 = RNG.integers(0, 256, (3, 20)).astype(np.uint8), e8m0((3, 2))
  np.testing.assert_array_equal(np.asarray(quant.dequantize_fp4(jnp.asarray(packed), jnp.asarray(s4))),
                                quant.dequantize_fp4(packed, s4))
