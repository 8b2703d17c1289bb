"""pack_documents keeps every token exactly once, aligns chunk starts, and row_loss_weights never crosses documents."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dsv4.data import DataError, PackedRow, count_rows, pack_documents, row_loss_weights


def _docs(lengths):
  """Document i holds distinct ids i*1000 + 1 ... so any lost, repeated or misplaced token shows."""
  return [np.arange(1, n + 1, dtype=np.int32) + 1000 * i for i, n in enumerate(lengths)]


def _chunks(row: PackedRow):
  """The (tokens, positions, target_mask) of each segment of a row, in slot order."""
  out = []
  for seg in range(1, int(row.segment_ids.max(initial=0)) + 1):
    at = np.flatnonzero(row.segment_ids == seg)
    assert at.size and np.array_equal(at, np.arange(at[0], at[-1] + 1)), "a chunk must be contiguous"
    out.append((at[0], row.tokens[at], row.positions[at], row.target_mask[at]))
  return out


packing_cases = st.tuples(st.lists(st.integers(0, 40), max_size=12), st.integers(2, 33), st.sampled_from([1, 2, 4, 8]))


@settings(max_examples=150, deadline=None)
@given(packing_cases)
def test_every_token_once_in_order_with_aligned_restarting_chunks(case):
  lengths, seq_len, align = case
  docs = _docs(lengths)
  rows = list(pack_documents(docs, seq_len, align=align, pad_id=-7))
  assert len(rows) == count_rows(lengths, seq_len, align=align)
  stream = []
  for row in rows:
    for field in (row.tokens, row.segment_ids, row.positions, row.target_mask):
      assert field.shape == (seq_len,) and field.dtype == np.int32
    for start, tokens, positions, mask in _chunks(row):
      assert start % align == 0
      assert np.array_equal(positions, np.arange(len(tokens)))
      assert mask.all()
      stream.append(tokens)
    pad = row.segment_ids == 0
    assert (row.tokens[pad] == -7).all() and not row.target_mask[pad].any() and not row_loss_weights(
      row.segment_ids, row.target_mask)[pad].any()
  # Chunks in order re-concatenate to the documents in order: nothing lost, nothing duplicated.
  flat = np.concatenate(stream) if stream else np.zeros(0, np.int32)
  expected = np.concatenate(docs) if docs else np.zeros(0, np.int32)
  assert np.array_equal(flat, expected)
  # No row is closed while it still had room for a chunk of two tokens, except the last one.
  for row in rows[:-1]:
    last = np.flatnonzero(row.segment_ids)[-1] + 1
    assert seq_len - (-(-last // align) * align) < 2 or row.segment_ids[-1] != 0


def test_split_document_continues_in_next_row_from_position_zero():
  rows = list(pack_documents([np.arange(1, 6), np.arange(11, 20)], 8, align=4))
  assert [r.tokens.tolist() for r in rows] == [[1, 2, 3, 4, 5, 0, 0, 0], [11, 12, 13, 14, 15, 16, 17, 18],
                                                [19, 0, 0, 0, 0, 0, 0, 0]]
  assert rows[0].segment_ids.tolist() == [1, 1, 1, 1, 1, 0, 0, 0]
  assert rows[2].positions.tolist() == [0] * 8 and rows[2].segment_ids.tolist() == [1, 0, 0, 0, 0, 0, 0, 0]


def test_target_masks_are_carried_through_splits():
  docs = [np.arange(1, 7), np.arange(11, 14)]
  masks = [np.array([0, 0, 1, 1, 0, 1]), np.array([0, 1, 1])]
  rows = list(pack_documents(docs, 4, target_masks=masks))
  got = np.concatenate([r.target_mask[r.segment_ids > 0] for r in rows])
  assert got.tolist() == [0, 0, 1, 1, 0, 1, 0, 1, 1]


def _naive_weights(seg, mask, offset):
  """Independent reference: token t predicts t+offset only inside one chunk; a chunk is a run of one segment id."""
  seq_len = len(seg)
  out = np.zeros(seq_len, np.float32)
  for t in range(seq_len - offset):
    if seg[t] == 0 or not mask[t + offset]:
      continue
    if all(seg[u] == seg[t] for u in range(t, t + offset + 1)):
      out[t] = 1
  return out


@settings(max_examples=100, deadline=None)
@given(packing_cases, st.integers(1, 2), st.randoms(use_true_random=False))
def test_loss_weights_never_pair_two_documents(case, offset, rnd):
  lengths, seq_len, align = case
  docs = _docs(lengths)
  masks = [np.array([rnd.random() < 0.7 for _ in d], np.int32) for d in docs]
  for row in pack_documents(docs, seq_len, align=align, target_masks=masks):
    w = row_loss_weights(row.segment_ids, row.target_mask, offset=offset)
    assert np.array_equal(w, _naive_weights(row.segment_ids, row.target_mask, offset))
    for t in np.flatnonzero(w):  # document id is in the token value: both tokens come from the same document
      assert row.tokens[t] // 1000 == row.tokens[t + offset] // 1000


def test_loss_weights_numpy_and_jax_agree_batched():
  rows = list(pack_documents(_docs([5, 9, 3, 12, 1, 7]), 10, align=2))
  seg = np.stack([r.segment_ids for r in rows])
  mask = np.stack([r.target_mask for r in rows])
  for offset in (1, 2):
    want = row_loss_weights(seg, mask, offset=offset)
    assert isinstance(want, np.ndarray) and want.shape == seg.shape
    got = jax.jit(lambda s, m, k=offset: row_loss_weights(s, m, offset=k))(jnp.asarray(seg), jnp.asarray(mask))
    assert np.array_equal(np.asarray(got), want)
    assert not want[:, -offset:].any()


def test_bad_input_errors():
  with pytest.raises(DataError, match="seq_len"):
    list(pack_documents([np.arange(3)], 1))
  with pytest.raises(DataError, match="align"):
    list(pack_documents([np.arange(3)], 8, align=0))
  with pytest.raises(DataError, match="document 1: expected a 1-D array"):
    list(pack_documents([np.arange(3), np.zeros((2, 2), np.int32)], 8))
  with pytest.raises(DataError, match="document 0: expected a 1-D array of integer"):
    list(pack_documents([np.array([0.5])], 8))
  with pytest.raises(DataError, match="target mask of document 0"):
    list(pack_documents([np.arange(3)], 8, target_masks=[np.ones(2)]))
  with pytest.raises(DataError, match="target_masks ran out at document 1"):
    list(pack_documents([np.arange(3), np.arange(2)], 8, target_masks=[np.ones(3)]))
  with pytest.raises(DataError, match="offset"):
    row_loss_weights(np.ones(4, np.int32), np.ones(4, np.int32), offset=0)
  assert not row_loss_weights(np.ones(4, np.int32), np.ones(4, np.int32), offset=5).any()
