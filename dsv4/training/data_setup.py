"""From a config's `data` section to tokenised splits and packed streams (the same for target pretraining and
drafter distillation)."""

from __future__ import annotations

import dataclasses
import math

import jax

from dsv4.data.corpus import ensure_corpus, load_corpus
from dsv4.data.sources import check_source, load_documents
from dsv4.data.stream import PackedStream, tokenize_dataset
from dsv4.data.tokenizer import check_vocab, load_tokenizer
from dsv4.errors import ConfigError, DataError
from dsv4.model.config import ModelConfig


@dataclasses.dataclass
class Splits:
  train: object        # datasets.Dataset with an `ids` column
  validation: object
  tokenizer: object    # tokenizers.Tokenizer
  manifest: dict | None  # the embedded corpus's manifest, if that is the source


def alignment(data, model: ModelConfig) -> int:
  """Documents start at multiples of every compression ratio, so each runs in a packed row as it would alone."""
  if data.align:
    return int(data.align)
  ratios = getattr(model, "compress_ratios", ())  # dense targets have no compressed attention: any start works
  return math.lcm(1, *[r for r in ratios if r])


def check_data(data, max_positions: int | None = None, model: str = "the model") -> None:
  """The `data` section's errors that need no data read, before any corpus, tokenizer, target or feature work:
  seq_len in [2, the model's positions], and a local source that is not there."""
  if int(data.seq_len) < 2:
    raise ConfigError(f"config.data.seq_len: must be ≥ 2 (got {data.seq_len}).")
  if max_positions is not None and int(data.seq_len) > max_positions:
    raise ConfigError(f"config.data.seq_len={data.seq_len}: longer than the max_position_embeddings "
                      f"({max_positions}) of {model}; use config.data.seq_len ≤ {max_positions}.")
  if data.source != "stdlib":
    if not data.source:
      raise DataError("config.data.source: empty; use 'stdlib' (the embedded corpus), a local path or a hub dataset "
                      "name.")
    check_source(data.source, where="config.data.source")


def load_splits(data, model: ModelConfig, log=print) -> Splits:
  manifest = None
  if data.source == "stdlib":
    manifest = ensure_corpus(data.corpus_dir, vocab_size=data.corpus_vocab_size, log=log)
    dd, tokenizer, manifest = load_corpus(data.corpus_dir)
    if data.tokenizer:
      tokenizer = load_tokenizer(data.tokenizer)
    train, val = dd[data.train_split], dd[data.val_split]
  else:
    if not data.tokenizer:
      raise DataError(f"config.data.tokenizer: required for source {data.source!r} (a tokenizer.json or a model "
                      "directory holding one).")
    tokenizer = load_tokenizer(data.tokenizer)
    train = load_documents(data.source, data.train_split, text_field=data.text_field, streaming=False)
    val = load_documents(data.source, data.val_split, text_field=data.text_field, streaming=False)
  check_vocab(tokenizer, model.vocab_size, where="config.model.vocab_size")
  return Splits(tokenize_dataset(train, tokenizer, data.text_field), tokenize_dataset(val, tokenizer, data.text_field),
                tokenizer, manifest)


def train_stream(splits: Splits, data, model: ModelConfig, batch_size: int) -> PackedStream:
  chunk = data.get("chunk", -1)
  return PackedStream(splits.train, seq_len=data.seq_len, batch_size=batch_size, align=alignment(data, model),
                      seed=data.seed, shuffle=True, repeat=True, process_index=jax.process_index(),
                      process_count=jax.process_count(), chunk=data.seq_len if chunk == -1 else (chunk or None))


def val_stream(splits: Splits, data, model: ModelConfig, batch_size: int) -> PackedStream:
  """One pass over the validation split in a fixed order (padding rows keep the last batch full)."""
  return PackedStream(splits.validation, seq_len=data.seq_len, batch_size=batch_size, align=alignment(data, model),
                      seed=0, shuffle=False, repeat=False, process_index=jax.process_index(),
                      process_count=jax.process_count())
