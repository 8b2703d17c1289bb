"""The batched training stream: shuffled, per-process sharded, packed, with an exact checkpointable state.

Documents (token-id arrays, or a map-style `datasets.Dataset` with an `ids` column from `tokenize_dataset`) are read
by index. Epoch e visits them in the order `np.random.default_rng([seed, e]).permutation(n)`, and process p of P packs
only `perm[p::P]`, so every process reads just its own documents. Packing (see `packing.py`) carries on across epoch
boundaries when repeating, so the stream is the endless concatenation of epochs cut into rows. With `chunk`, documents
are first cut into pieces of at most `chunk` tokens and the pieces are what gets shuffled and sharded.

A row is closed right after a document (or its head) is placed, never on account of the next document; between rows
the whole packer state is therefore (epoch, document index, token offset into a split document). `get_state` returns
that plus the config it is only valid for, and `set_state` resumes exactly there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from dsv4.data.packing import PackedRow, RowBuilder, as_doc, as_mask, check_packing_args, count_rows, padding_row
from dsv4.data.sources import CHAT_FIELD, row_text, text_column
from dsv4.errors import DataError

if TYPE_CHECKING:
  import datasets
  import tokenizers

IDS, MASK = "ids", "target_mask"
STATE_VERSION = 1
# A state is only valid for a stream that visits the same documents in the same order and cuts the same rows.
_CONFIG_FIELDS = ("seed", "shuffle", "seq_len", "batch_size", "align", "process_index", "process_count", "num_docs",
                  "chunk")
_CURSOR_FIELDS = ("epoch", "index", "offset", "step")


def _span_mask(offsets, spans) -> list[int]:
  """1 on every token whose character range overlaps an assistant span (zero-width special tokens never do)."""
  if not offsets:
    return []
  tok = np.asarray(offsets, np.int64).reshape(-1, 2)
  sp = np.asarray(spans, np.int64).reshape(-1, 2)
  hit = (tok[:, None, 0] < sp[None, :, 1]) & (tok[:, None, 1] > sp[None, :, 0])
  return hit.any(axis=1).astype(np.int32).tolist()


def tokenize_dataset(ds: datasets.Dataset, tokenizer: tokenizers.Tokenizer, text_field: str = "text",
                     num_proc: int | None = None) -> datasets.Dataset:
  """A dataset with an `ids` column (list of int32) in place of all columns, via `tokenizer.encode_batch`.

  Chat datasets (a `messages` column, or `text_field` holding message lists) are rendered with `render_chat` and also
  get a `target_mask` column: 1 on tokens inside assistant replies, for response-only loss. Special tokens the
  tokenizer's post-processor adds are kept (they are not targets in chat rows).

  A dataset that already has an `ids` column (e.g. from `dsv4.data.regenerate`) is pre-tokenised: its `ids` and
  `target_mask` (if any) columns are returned as they are, without re-tokenisation.
  """
  import datasets
  columns = ds.column_names
  if columns is not None and IDS in columns:
    return _pretokenized(ds)
  column = text_column(ds, text_field)
  if columns is not None and column not in columns:
    raise DataError(f"tokenize_dataset: no column {text_field!r}; available columns: {', '.join(columns)}. "
                    "Pass text_field=<one of them>.")
  features = ds.features
  chat = column == CHAT_FIELD if features is None else not isinstance(features[column], datasets.Value)
  out_features = datasets.Features({IDS: datasets.List(datasets.Value("int32"))} |
                                   ({MASK: datasets.List(datasets.Value("int32"))} if chat else {}))

  def encode(batch):
    rendered = [row_text(value) for value in batch[column]]
    encodings = tokenizer.encode_batch([text for text, _ in rendered])
    out = {IDS: [e.ids for e in encodings]}
    if chat:
      out[MASK] = [_span_mask(e.offsets, spans or []) for e, (_, spans) in zip(encodings, rendered, strict=True)]
    return out

  kwargs = {} if num_proc is None else {"num_proc": num_proc}
  return ds.map(encode, batched=True, remove_columns=columns, features=out_features, **kwargs)


def _pretokenized(ds):
  """The `ids` / `target_mask` columns of a pre-tokenised dataset, after checking they hold integer lists."""
  import datasets
  keep = [c for c in (IDS, MASK) if c in ds.column_names]
  for c in keep if ds.features is not None else ():
    feature = ds.features[c]
    inner = getattr(feature, "feature", None)
    if not (isinstance(feature, datasets.List | datasets.LargeList | datasets.Sequence)
            and isinstance(inner, datasets.Value) and inner.dtype.startswith(("int", "uint"))):
      raise DataError(f"tokenize_dataset: column {c!r} must hold lists of integer token ids to be used as "
                      f"pre-tokenised, got {feature}; rename the column or drop it")
  return ds.select_columns(keep)


class _DocTable:
  """Random access to (tokens, target_mask or None) by document index, over a Dataset or a sequence of arrays."""

  def __init__(self, docs):
    import datasets
    if isinstance(docs, datasets.IterableDataset):
      raise DataError("PackedStream needs random access: pass a map-style Dataset (not streaming) or a list of "
                      "token arrays")
    if isinstance(docs, datasets.Dataset):
      if IDS not in docs.column_names:
        raise DataError(f"PackedStream: dataset has no {IDS!r} column (columns: {', '.join(docs.column_names)}); "
                        "tokenize it first with tokenize_dataset")
      keep = [c for c in (IDS, MASK) if c in docs.column_names]
      self.rows, self.is_dataset, self.has_mask = docs.select_columns(keep).with_format("numpy"), True, MASK in keep
    elif isinstance(docs, Sequence | np.ndarray):
      self.rows, self.is_dataset, self.has_mask = docs, False, False
    else:
      raise DataError(f"PackedStream: docs must be a sequence of token arrays or a datasets.Dataset, got "
                      f"{type(docs).__name__}")
    self._last: tuple[int, tuple] = (-1, ())

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    i = int(i)
    if self._last[0] == i:  # a long document is read once, not once per row it spans
      return self._last[1]
    if not self.is_dataset:
      doc = as_doc(self.rows[i], f"document {i}"), None
    else:
      row = self.rows[i]
      tokens = as_doc(row[IDS], f"document {i} ({IDS!r})")
      doc = tokens, as_mask(row[MASK], len(tokens), f"document {i} ({MASK!r})") if self.has_mask else None
    self._last = (i, doc)
    return doc

  def lengths(self) -> np.ndarray:
    if not self.is_dataset:
      return np.array([len(d) for d in self.rows], np.int64)
    import pyarrow.compute as pc
    ids = self.rows.with_format("arrow").select_columns([IDS])[:][IDS]  # honours select/shuffle index mappings
    return pc.fill_null(pc.list_value_length(ids), 0).to_numpy().astype(np.int64)


class _ChunkTable:
  """Documents cut into pieces of at most `chunk` tokens, each addressed as a document of its own.

  Shuffling pieces rather than whole documents decorrelates a batch: a long file otherwise fills many consecutive
  rows. Each piece starts at position 0 (as any row-split document does), so this changes order, not content.
  """

  def __init__(self, table: _DocTable, chunk: int):
    lengths = table.lengths()
    pieces = np.maximum(1, -(-lengths // chunk))
    self.table, self.chunk = table, chunk
    self.doc = np.repeat(np.arange(len(lengths)), pieces)
    self.start = (np.arange(len(self.doc)) - np.repeat(np.cumsum(pieces) - pieces, pieces)) * chunk
    self.end = np.minimum(self.start + chunk, lengths[self.doc])

  def __len__(self) -> int:
    return len(self.doc)

  def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
    tokens, mask = self.table[self.doc[i]]
    a, b = self.start[i], self.end[i]
    return tokens[a:b], None if mask is None else mask[a:b]

  def lengths(self) -> np.ndarray:
    return np.maximum(self.end - self.start, 0)


class PackedStream:
  """Iterator of batches: dicts of int32 `tokens`, `segment_ids`, `positions`, `target_mask`, each
  [batch_size // process_count, seq_len] (this process's share of the global batch).

  repeat=True runs forever, epoch after epoch. repeat=False stops after one epoch: the last batch is filled with
  padding rows (segment 0), and with several processes every process yields the same number of batches (the short
  ones add all-padding batches) so collective steps stay in lockstep.
  """

  def __init__(self, docs, *, seq_len: int, batch_size: int, align: int = 1, seed: int = 0, shuffle: bool = True,
               repeat: bool = True, process_index: int = 0, process_count: int = 1, pad_id: int = 0,
               chunk: int | None = None):
    check_packing_args(seq_len, align)
    if not isinstance(process_count, int) or process_count < 1:
      raise DataError(f"process_count must be an int >= 1, got {process_count!r}")
    if not isinstance(process_index, int) or not 0 <= process_index < process_count:
      raise DataError(f"process_index must be in [0, {process_count}), got {process_index!r}")
    if not isinstance(batch_size, int) or batch_size < 1 or batch_size % process_count:
      raise DataError(f"batch_size is the global batch and must be a positive multiple of process_count="
                      f"{process_count}, got {batch_size!r}")
    if not isinstance(seed, int | np.integer) or seed < 0:
      raise DataError(f"seed must be a non-negative int, got {seed!r}")
    self._docs = _DocTable(docs)
    if chunk is not None:
      if not isinstance(chunk, int) or chunk < 1:
        raise DataError(f"chunk must be a positive int (tokens per shuffled piece) or None, got {chunk!r}")
      self._docs = _ChunkTable(self._docs, chunk)
    self.chunk = chunk
    if len(self._docs) == 0:
      raise DataError("PackedStream: no documents (empty docs list or dataset)")
    if len(self._docs) < process_count:
      raise DataError(f"PackedStream: {len(self._docs)} documents cannot feed process_count={process_count} "
                      "processes; every process needs at least one")
    self.seq_len, self.batch_size, self.align, self.seed = int(seq_len), batch_size, int(align), int(seed)
    self.shuffle, self.repeat, self.pad_id = bool(shuffle), bool(repeat), int(pad_id)
    self.process_index, self.process_count = process_index, process_count
    self.local_batch_size = batch_size // process_count
    self.num_docs = len(self._docs)
    self._builder = RowBuilder(self.seq_len, align=self.align, pad_id=self.pad_id)
    self._order_epoch, self._order = -1, np.zeros(0, np.int64)
    self._num_batches: int | None = None  # repeat=False only: batches every process yields
    self._epoch = self._index = self._offset = self._step = 0

  def _permutation(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_docs)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_docs)

  def epoch_order(self, epoch: int) -> np.ndarray:
    """Indices of the documents this process packs in `epoch`, in packing order."""
    if epoch != self._order_epoch:
      self._order_epoch, self._order = epoch, self._permutation(epoch)[self.process_index::self.process_count]
    return self._order

  def __iter__(self) -> PackedStream:
    return self

  def _next_row(self) -> PackedRow | None:
    """The next closed row, or None once a non-repeating stream has run out."""
    empties = 0
    while True:
      order = self.epoch_order(self._epoch)
      if self._index >= len(order):
        if not self.repeat:
          return None if self._builder.empty else self._builder.take()
        self._epoch, self._index, self._offset = self._epoch + 1, 0, 0
        continue
      tokens, mask = self._docs[order[self._index]]
      placed = self._builder.put(tokens[self._offset:], None if mask is None else mask[self._offset:])
      self._offset += placed
      empties = 0 if placed else empties + 1
      if empties > len(order):
        raise DataError(f"PackedStream: every document of process {self.process_index} is empty")
      if self._offset >= len(tokens):
        self._index, self._offset = self._index + 1, 0
      if self._builder.full:
        return self._builder.take()

  def _batches_per_process(self) -> int:
    lengths = self._docs.lengths()
    # Packing depends on document lengths only, so every process's row count follows from the length column.
    perm = self._permutation(0)
    rows = [count_rows(lengths[perm[p::self.process_count]], self.seq_len, align=self.align)
            for p in range(self.process_count)]
    return max(-(-r // self.local_batch_size) for r in rows)

  def __next__(self) -> dict[str, np.ndarray]:
    if not self.repeat and self.process_count > 1 and self._num_batches is None:
      self._num_batches = self._batches_per_process()
    rows: list[PackedRow] = []
    while len(rows) < self.local_batch_size and (row := self._next_row()) is not None:
      rows.append(row)
    if not rows and (self._num_batches is None or self._step >= self._num_batches):
      raise StopIteration
    rows += [padding_row(self.seq_len, self.pad_id)] * (self.local_batch_size - len(rows))
    self._step += 1
    return {name: np.stack([getattr(r, name) for r in rows]) for name in
            ("tokens", "segment_ids", "positions", "target_mask")}

  def get_state(self) -> dict:
    """JSON-serialisable position of the stream (between batches) and the config it belongs to."""
    return {"version": STATE_VERSION, "epoch": self._epoch, "index": self._index, "offset": self._offset,
            "step": self._step, "seed": self.seed, "shuffle": self.shuffle, "seq_len": self.seq_len,
            "batch_size": self.batch_size, "align": self.align, "process_index": self.process_index,
            "process_count": self.process_count, "num_docs": self.num_docs, "chunk": self.chunk}

  def set_state(self, state: dict) -> None:
    """Resumes at `state` from `get_state`; DataError if it was taken under a different config."""
    if not isinstance(state, dict):
      raise DataError(f"stream state must be a dict from PackedStream.get_state, got {type(state).__name__}")
    missing = [k for k in ("version",) + _CONFIG_FIELDS + _CURSOR_FIELDS if k not in state]
    if missing:
      raise DataError(f"stream state lacks field(s) {', '.join(missing)}; pass a dict from PackedStream.get_state")
    if state["version"] != STATE_VERSION:
      raise DataError(f"stream state version {state['version']!r} is not {STATE_VERSION}")
    mine = self.get_state()
    for field in _CONFIG_FIELDS:
      if state[field] != mine[field]:
        raise DataError(f"stream state field {field!r} is {state[field]!r} but this stream has {mine[field]!r}; "
                        "build the stream with the config the state was saved under")
    epoch, index, offset, step = (state[k] for k in _CURSOR_FIELDS)
    if not all(isinstance(v, int) and v >= 0 for v in (epoch, index, offset, step)):
      raise DataError(f"stream state cursor must be non-negative ints, got epoch={epoch!r} index={index!r} "
                      f"offset={offset!r} step={step!r}")
    if index > len(self.epoch_order(epoch)):
      raise DataError(f"stream state index {index} is past this process's {len(self.epoch_order(epoch))} documents")
    self._epoch, self._index, self._offset, self._step = epoch, index, offset, step
    self._builder = RowBuilder(self.seq_len, align=self.align, pad_id=self.pad_id)
