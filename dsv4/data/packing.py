"""Document-aware packing of token sequences into fixed-length rows.

A packed row carries `tokens[T]`, `segment_ids[T]` (0 = padding, 1, 2, ... = the document chunks of the row),
`positions[T]` (restarting at 0 at each chunk) and `target_mask[T]` (1 where the token is a prediction target).
The target's compressed attention pools windows of consecutive row slots counted from slot 0, so each chunk starts at
a slot that is a multiple of `align` (the lcm of the compression ratios); a document then sees exactly the windows it
would see alone. Padding fills the alignment gaps and the row tail.

Packing is greedy and streaming: the next document goes at the cursor rounded up to `align`; a document longer than
the space left is split, and the rest starts the next row as a new chunk with positions from 0. The split-off part
loses the context before it: the usual chunking of long documents. `RowBuilder` is that packer as an explicit cursor,
so a stream can snapshot it between rows; `pack_documents` is the plain iterator over it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from dsv4.errors import DataError

MIN_FREE = 2  # a chunk of one token predicts nothing, so a row with fewer free slots is closed


@dataclass(frozen=True)
class PackedRow:
  """One packed row; every field is an int32 array of shape [seq_len]."""
  tokens: np.ndarray
  segment_ids: np.ndarray
  positions: np.ndarray
  target_mask: np.ndarray


def check_packing_args(seq_len: int, align: int) -> None:
  if not isinstance(seq_len, int | np.integer) or seq_len < MIN_FREE:
    raise DataError(f"seq_len must be an int >= {MIN_FREE}, got {seq_len!r}")
  if not isinstance(align, int | np.integer) or align < 1:
    raise DataError(f"align must be an int >= 1 (1 = no alignment), got {align!r}")


def as_doc(doc, what: str = "document") -> np.ndarray:
  """A 1-D int32 token array, or DataError naming `what`."""
  arr = np.asarray(doc)
  if arr.ndim != 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
    raise DataError(f"{what}: expected a 1-D array of integer token ids, got shape {arr.shape} dtype {arr.dtype}")
  return arr.astype(np.int32, copy=False)


def as_mask(mask, n: int, what: str = "target mask") -> np.ndarray:
  """A 0/1 int32 array of length `n`, or DataError naming `what`."""
  arr = np.asarray(mask)
  if arr.shape != (n,):
    raise DataError(f"{what}: shape {arr.shape} does not match its document's {n} tokens")
  if arr.size and not np.isin(arr, (0, 1)).all():
    raise DataError(f"{what}: values must be 0 or 1")
  return arr.astype(np.int32, copy=False)


class RowBuilder:
  """The row being filled: `put` places a document (or its head), `full` says the row is closed, `take` emits it."""

  def __init__(self, seq_len: int, *, align: int = 1, pad_id: int = 0):
    check_packing_args(seq_len, align)
    self.seq_len, self.align, self.pad_id = int(seq_len), int(align), int(pad_id)
    self._reset()

  def _reset(self) -> None:
    self.tokens = np.full(self.seq_len, self.pad_id, np.int32)
    self.segment_ids = np.zeros(self.seq_len, np.int32)
    self.positions = np.zeros(self.seq_len, np.int32)
    self.target_mask = np.zeros(self.seq_len, np.int32)
    self.cursor = 0  # next free slot, already a multiple of align
    self.num_segments = 0

  @property
  def empty(self) -> bool:
    return self.num_segments == 0

  @property
  def full(self) -> bool:
    return self.seq_len - self.cursor < MIN_FREE

  def put(self, tokens: np.ndarray, target_mask: np.ndarray | None = None) -> int:
    """Places the head of `tokens` as a new chunk at the cursor; returns how many tokens fit (0 if the row is full)."""
    if self.full or len(tokens) == 0:
      return 0
    n = min(len(tokens), self.seq_len - self.cursor)
    at = slice(self.cursor, self.cursor + n)
    self.num_segments += 1
    self.tokens[at] = tokens[:n]
    self.segment_ids[at] = self.num_segments
    self.positions[at] = np.arange(n, dtype=np.int32)
    self.target_mask[at] = 1 if target_mask is None else target_mask[:n]
    end = self.cursor + n
    self.cursor = min(-(-end // self.align) * self.align, self.seq_len)
    return n

  def take(self) -> PackedRow:
    """The row so far (padded) and a fresh empty one behind it."""
    row = PackedRow(self.tokens, self.segment_ids, self.positions, self.target_mask)
    self._reset()
    return row


def padding_row(seq_len: int, pad_id: int = 0) -> PackedRow:
  """A row of padding only (segment 0, no targets), to keep batch shapes static."""
  zeros = np.zeros(seq_len, np.int32)
  return PackedRow(np.full(seq_len, pad_id, np.int32), zeros, zeros.copy(), zeros.copy())


def pack_documents(docs: Iterable[np.ndarray], seq_len: int, *, align: int = 1, pad_id: int = 0,
                   target_masks: Iterable[np.ndarray] | None = None) -> Iterator[PackedRow]:
  """Greedily packs `docs` into rows of `seq_len` (see the module docstring); the last partial row comes padded.

  `target_masks`, if given, holds one 0/1 array per document (e.g. 1 on chat response tokens only); by default every
  document token is a target. Empty documents are skipped.
  """
  check_packing_args(seq_len, align)
  builder = RowBuilder(seq_len, align=align, pad_id=pad_id)
  masks = iter(target_masks) if target_masks is not None else None
  for i, doc in enumerate(docs):
    tokens = as_doc(doc, f"document {i}")
    mask = None
    if masks is not None:
      try:
        mask = as_mask(next(masks), len(tokens), f"target mask of document {i}")
      except StopIteration:
        raise DataError(f"target_masks ran out at document {i}; give one mask per document") from None
    done = 0
    while done < len(tokens):
      done += builder.put(tokens[done:], None if mask is None else mask[done:])
      if builder.full:
        yield builder.take()
  if not builder.empty:
    yield builder.take()


def count_rows(lengths: Iterable[int], seq_len: int, *, align: int = 1) -> int:
  """How many rows `pack_documents` makes from documents of these lengths, without touching any tokens."""
  check_packing_args(seq_len, align)
  rows, cursor, open_row = 0, 0, False
  for length in lengths:
    left = int(length)
    while left > 0:
      n = min(left, seq_len - cursor)
      left -= n
      cursor = min(-(-(cursor + n) // align) * align, seq_len)
      open_row = True
      if seq_len - cursor < MIN_FREE:
        rows, cursor, open_row = rows + 1, 0, False
  return rows + open_row


def row_loss_weights(segment_ids, target_mask, offset: int = 1):
  """weight[..., t] = 1 iff token t+offset is a target predicted from t inside the same document chunk.

  That is segment[t] != 0, segment[t+offset] == segment[t] and target_mask[t+offset] == 1; the last `offset`
  positions get 0 (all of them when offset >= T). Works on numpy arrays (returns numpy) and on jax arrays or tracers
  (returns jax), shape [..., T], float32. offset=1 is next-token prediction, offset=2 the MTP head.
  """
  if isinstance(segment_ids, np.ndarray) and isinstance(target_mask, np.ndarray):
    xp = np
  else:
    import jax.numpy as xp
  if not isinstance(offset, int | np.integer) or offset < 1:
    raise DataError(f"offset must be an int >= 1, got {offset!r}")
  offset = min(int(offset), segment_ids.shape[-1])  # a row no longer than offset has nothing to predict
  here, ahead = segment_ids[..., :-offset], segment_ids[..., offset:]
  valid = (here != 0) & (ahead == here) & (target_mask[..., offset:] == 1)
  tail = xp.zeros(segment_ids.shape[:-1] + (offset,), dtype=xp.float32)
  return xp.concatenate([valid.astype(xp.float32), tail], axis=-1)
