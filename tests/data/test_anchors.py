"""Anchor sampling against a naive enumeration of the candidate rule, per-document counts, the shared buffer."""

import numpy as np
import pytest

from dsv4.data.anchors import batch_anchors, candidates, row_anchors
from dsv4.errors import DataError


def naive_candidates(seg, mask):
  return [i for i in range(len(seg) - 1)
          if seg[i] != 0 and seg[i + 1] == seg[i] and mask[i] == 1 and mask[i + 1] == 1]


def packed_row():
  """Three documents (ids 1..3) of lengths 12, 5, 9, then 6 padding; doc 2 has a 2-token prompt."""
  seg = np.array([1] * 12 + [2] * 5 + [3] * 9 + [0] * 6)
  mask = np.ones_like(seg)
  mask[12:14] = 0   # doc 2's prompt
  mask[-6:] = 0
  return seg, mask


def test_candidates_follow_the_rule_exactly():
  rng = np.random.default_rng(0)
  for _ in range(50):
    seg = np.sort(rng.integers(0, 4, size=40))[::-1] if rng.random() < 0.3 else np.repeat(rng.integers(0, 4, 8), 5)
    mask = rng.integers(0, 2, size=40)
    assert candidates(seg, mask).tolist() == naive_candidates(seg, mask)


def test_each_document_gets_its_own_anchors_all_valid_and_sorted():
  seg, mask = packed_row()
  anchors, keep, dropped = row_anchors(seg, mask, num_anchors=3, max_blocks=16, rng=np.random.default_rng(1))
  chosen = anchors[keep == 1]
  assert dropped == 0 and list(chosen) == sorted(chosen)
  valid = naive_candidates(seg, mask)
  assert set(chosen) <= set(valid)
  for d in (1, 2, 3):  # three each, or all of a document's candidates when it has fewer (doc 2: 14 and 15)
    assert np.sum(seg[chosen] == d) == min(3, sum(seg[i] == d for i in valid))
  assert 13 not in chosen and 12 not in chosen  # doc 2's prompt tokens are no anchors (12→13 both prompt)


def test_a_short_document_is_not_starved_when_the_buffer_is_full():
  seg, mask = packed_row()
  # doc 2 has only 2 candidates (14, 15); a buffer of 5 shared by draws of 4, 2, 4 → quotas 2/1/2 or 2/2/1 …
  for seed in range(20):
    anchors, keep, dropped = row_anchors(seg, mask, num_anchors=4, max_blocks=5, rng=np.random.default_rng(seed))
    per_doc = [int(np.sum(seg[anchors[keep == 1]] == d)) for d in (1, 2, 3)]
    assert sum(per_doc) == 5 and dropped == 10 - 5
    assert min(per_doc) >= 1 and max(per_doc) - min(per_doc) <= 1


def test_draws_depend_only_on_seed_step_and_row():
  seg, mask = packed_row()
  batch = {"segment_ids": np.stack([seg, seg]), "target_mask": np.stack([mask, mask])}
  a = batch_anchors(batch, 2, 8, seed=0, step=5)
  b = batch_anchors(batch, 2, 8, seed=0, step=5)
  c = batch_anchors(batch, 2, 8, seed=0, step=6)
  np.testing.assert_array_equal(a["anchor"], b["anchor"])
  assert not np.array_equal(a["anchor"], c["anchor"])
  assert not np.array_equal(a["anchor"][0], a["anchor"][1])  # rows differ
  shifted = batch_anchors({k: v[1:] for k, v in batch.items()}, 2, 8, seed=0, step=5, first_row=1)
  np.testing.assert_array_equal(shifted["anchor"][0], a["anchor"][1])  # a process's rows draw as in the whole batch


def test_padding_rows_give_only_dummy_blocks_and_bad_sizes_are_refused():
  batch = {"segment_ids": np.zeros((1, 16), np.int32), "target_mask": np.zeros((1, 16), np.int32)}
  out = batch_anchors(batch, 4, 4, seed=0, step=0)
  assert out["keep"].sum() == 0
  with pytest.raises(DataError, match="num_anchors"):
    batch_anchors(batch, 0, 4, seed=0, step=0)
