"""dsv4's ggml dequantisers against the `gguf` package's (the code transformers and llama.cpp's tools use)."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from dsv4.io import gguf_quant
from tests.io.gguf_fixtures import random_blocks

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q6_K]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_matches_gguf_package(qtype):
  rng = np.random.default_rng(int(qtype))
  rows, cols = 6, 3 * 256
  raw = random_blocks(rng, qtype, rows, cols)
  assert raw.shape[1] == cols // gguf.GGML_QUANT_SIZES[qtype][0] * gguf.GGML_QUANT_SIZES[qtype][1]
  ref = gguf.quants.dequantize(raw if qtype not in (Q.F32, Q.F16) else raw.view(
      {Q.F32: np.float32, Q.F16: np.float16}[qtype]), qtype).astype(np.float32)
  ours = gguf_quant.dequantize(raw, int(qtype), rows * cols).reshape(rows, cols)
  assert ref.shape == ours.shape
  np.testing.assert_array_equal(ours, ref)
  assert np.unique(ours).size > cols  # the random blocks exercise many codes and scales, not a constant


def test_block_sizes_match_ggml():
  for qtype in TYPES:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert gguf_quant.BLOCK_VALUES[int(qtype)] == block
    assert gguf_quant.block_bytes(int(qtype)) == size


def test_wrong_byte_count_is_refused():
  with pytest.raises(ValueError, match="Q4_1: 64 values need 40 bytes, got 39"):
    gguf_quant.dequantize(np.zeros(39, np.uint8), int(Q.Q4_1), 64)
  with pytest.raises(ValueError, match="not a whole number"):
    gguf_quant.dequantize(np.zeros(20, np.uint8), int(Q.Q8_0), 16)


def test_unsupported_type_is_refused():
  with pytest.raises(ValueError, match="ggml type 6 has no dequantiser"):
    gguf_quant.dequantize(np.zeros(22, np.uint8), int(Q.Q5_0), 32)
