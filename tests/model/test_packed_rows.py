"""Packed rows: documents placed at multiples of the compression ratios, with positions restarting per
document, give exactly the logits (main head and MTP) each document gets when run alone — so no token
attends across a document boundary, through sliding, CSA (indexer top-k) and HCA attention alike."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.model import Transformer
from tests.model.test_transformer import CFG

ALIGN = 128  # lcm of CFG.compress_ratios (4, 128)


def _packed_row(docs, length):
  tokens, segments, positions = np.zeros(length, np.int32), np.zeros(length, np.int32), np.zeros(length, np.int32)
  starts, cursor = [], 0
  for i, doc in enumerate(docs):
    cursor = -(-cursor // ALIGN) * ALIGN
    starts.append(cursor)
    tokens[cursor:cursor + len(doc)] = doc
    segments[cursor:cursor + len(doc)] = i + 1
    positions[cursor:cursor + len(doc)] = np.arange(len(doc))
    cursor += len(doc)
  return tokens, segments, positions, starts


@pytest.fixture(scope="module")
def forward():
  graphdef, state = nnx.split(Transformer(CFG, rngs=nnx.Rngs(3)))

  @jax.jit
  def run(ids_T, positions_T=None, segments_T=None):
    packed = {} if positions_T is None else dict(positions_BT=positions_T[None], segment_ids_BT=segments_T[None])
    out = nnx.merge(graphdef, state).forward(ids_T[None], with_mtp=True, **packed)
    return out.logits_BTV[0], out.mtp_logits_KBTV[:, 0]

  return run


@pytest.mark.parametrize("lengths", [(100, 150), (128, 40, 131)])
def test_each_document_in_a_packed_row_equals_its_lone_run(forward, lengths):
  rng = np.random.default_rng(sum(lengths))
  docs = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in lengths]
  tokens, segments, positions, starts = _packed_row(docs, 512)
  logits, mtp = forward(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments))
  for doc, start in zip(docs, starts, strict=True):
    alone_logits, alone_mtp = forward(jnp.asarray(doc))
    n = len(doc)
    np.testing.assert_allclose(np.asarray(logits[start:start + n]), np.asarray(alone_logits), rtol=1e-5, atol=1e-5)
    # MTP module k at t reads token t + 1 + k, which lies past a document's end for its last k + 1 positions.
    for k in range(CFG.num_nextn_predict_layers):
      np.testing.assert_allclose(np.asarray(mtp[k, start:start + n - k - 1]), np.asarray(alone_mtp[k, :n - k - 1]),
                                 rtol=1e-5, atol=1e-5)


def test_changing_one_document_leaves_the_others_unchanged(forward):
  rng = np.random.default_rng(7)
  docs = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in (200, 180)]
  tokens, segments, positions, starts = _packed_row(docs, 512)
  other = tokens.copy()
  other[:200] = rng.integers(1, CFG.vocab_size, 200)
  run = lambda t: np.asarray(forward(jnp.asarray(t), jnp.asarray(positions), jnp.asarray(segments))[0])
  a, b = run(tokens), run(other)
  np.testing.assert_array_equal(a[starts[1]:starts[1] + 180], b[starts[1]:starts[1] + 180])
  assert np.abs(a[:200] - b[:200]).max() > 1e-3  # the changed document itself did change
