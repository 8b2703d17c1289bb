"""Anchor sampling for drafter training: which positions of a packed row start a supervised block.

A candidate anchor is a row index i ≤ T−2 where token i and token i+1 are loss tokens (target_mask = 1) of the
same document (DeepSpec's rule, so the first response token is never a label: the prompt's last token is no
anchor). Each document gets up to `num_anchors` candidates drawn
uniformly without replacement — counted per document, so short documents packed beside long ones are not
starved — and the row's `max_blocks` buffer is shared by water-filling: every document keeps min(its draw, q)
anchors for the largest q that fits, the remaining places go one each to randomly chosen documents still
holding more. Unused places are dummy blocks (keep = 0). Anchors come out sorted.

The draw for row r of global step s depends only on (seed, s, r): resuming at a step reproduces it, no state.
"""

from __future__ import annotations

import numpy as np

from dsv4.errors import DataError


def candidates(segment_ids_T: np.ndarray, target_mask_T: np.ndarray) -> np.ndarray:
  """Row indices i with tokens i and i+1 both loss tokens of one (non-padding) document."""
  seg, mask = np.asarray(segment_ids_T), np.asarray(target_mask_T)
  ok = (seg[:-1] != 0) & (seg[1:] == seg[:-1]) & (mask[:-1] == 1) & (mask[1:] == 1)
  return np.flatnonzero(ok)


def _water_fill(counts_D: np.ndarray, capacity: int, rng: np.random.Generator) -> np.ndarray:
  """Per-document quotas ≤ counts summing to min(capacity, Σ counts), as equal as possible."""
  if counts_D.sum() <= capacity:
    return counts_D.copy()
  q = 0
  while np.minimum(counts_D, q + 1).sum() <= capacity:
    q += 1
  quota = np.minimum(counts_D, q)
  spare = capacity - quota.sum()
  more = np.flatnonzero(counts_D > q)
  quota[rng.choice(more, size=spare, replace=False)] += 1
  return quota


def row_anchors(segment_ids_T, target_mask_T, num_anchors: int, max_blocks: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
  """(anchors [max_blocks] int32, keep [max_blocks] int32, dropped) for one row; `dropped` counts drawn anchors
  the row's buffer had no room for."""
  cand = candidates(segment_ids_T, target_mask_T)
  seg = np.asarray(segment_ids_T)[cand]
  docs = np.unique(seg)
  draws = [rng.choice(cand[seg == d], size=min(num_anchors, int((seg == d).sum())), replace=False) for d in docs]
  counts = np.asarray([len(x) for x in draws], np.int64)
  quota = _water_fill(counts, max_blocks, rng)
  chosen = np.sort(np.concatenate([x[:q] for x, q in zip(draws, quota, strict=True)] or [np.zeros(0, np.int64)]))
  anchors = np.zeros(max_blocks, np.int32)
  keep = np.zeros(max_blocks, np.int32)
  anchors[:len(chosen)], keep[:len(chosen)] = chosen, 1
  return anchors, keep, int(counts.sum() - quota.sum())


def batch_anchors(batch: dict, num_anchors: int, max_blocks: int, seed: int, step: int,
                  first_row: int = 0) -> dict:
  """{'anchor': [B, A] int32, 'keep': [B, A] int32, 'dropped': int} for a batch of packed rows; `first_row` is
  the global index of this process's first row (so every process draws differently, reproducibly)."""
  if num_anchors < 1 or max_blocks < 1:
    raise DataError(f"anchors: num_anchors ({num_anchors}) and max_blocks ({max_blocks}) must be ≥ 1.")
  rows = []
  for r, (seg, mask) in enumerate(zip(batch["segment_ids"], batch["target_mask"], strict=True)):
    rng = np.random.default_rng([seed, step, first_row + r])
    rows.append(row_anchors(seg, mask, num_anchors, max_blocks, rng))
  anchors, keep, dropped = zip(*rows, strict=True)
  return {"anchor": np.stack(anchors), "keep": np.stack(keep), "dropped": int(sum(dropped))}
