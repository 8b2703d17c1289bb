"""Byte-level BPE tokenizers (HF `tokenizers`): train one, load one, check it fits a model.

Byte-level means the text is first mapped to its UTF-8 bytes, each shown as one of 256 printable symbols, and
BPE merges those symbols; decoding maps them back. With no normalizer the round trip decode(encode(x)) == x is
exact for any text, including code's runs of spaces, tabs and \\r\\n. The special tokens come first, so
`<|pad|>` is id 0 (the id padded positions use everywhere in dsv4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dsv4.errors import DataError

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>")
PAD = "<|pad|>"
TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer(path: str | Path) -> Tokenizer:
  """A tokenizer from a `tokenizer.json` file, a (model) directory that contains one, or a GGUF model (a .gguf file or
  an installed model's name such as smollm2-135m-instruct: the tokenizer its metadata describes)."""
  from dsv4.io.target import is_gguf
  if is_gguf(path):
    from dsv4.io.gguf import load_tokenizer as load_gguf_tokenizer
    return load_gguf_tokenizer(path).tokenizer
  path = Path(path)
  file = path / TOKENIZER_FILE if path.is_dir() else path
  if not file.is_file():
    where = f"{path} has no {TOKENIZER_FILE}" if path.is_dir() else f"{path} does not exist"
    raise DataError(f"tokenizer: {where}; pass a tokenizer.json file or a directory containing one")
  try:
    return Tokenizer.from_file(str(file))
  except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
    raise DataError(f"tokenizer: {file} is not a valid tokenizers JSON file ({e})") from e


def train_bpe(texts: Iterable[str], vocab_size: int = 8192, *,
              special_tokens: Sequence[str] = SPECIAL_TOKENS) -> Tokenizer:
  """A byte-level BPE with `vocab_size` entries (fewer if the texts run out of merges), specials first."""
  special_tokens = list(special_tokens)
  if not special_tokens or special_tokens[0] != PAD:
    raise DataError(f"train_bpe: special_tokens must start with {PAD!r} so that it is id 0, got {special_tokens}")
  if len(set(special_tokens)) != len(special_tokens):
    raise DataError(f"train_bpe: special_tokens has duplicates: {special_tokens}")
  check_train_vocab_size(vocab_size, special_tokens)
  tok = Tokenizer(models.BPE())
  # add_prefix_space=False: a prefix space would be an extra byte that decode cannot tell from the text's own.
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if tok.token_to_id(PAD) != 0:  # the trainer numbers specials first; guard against that ever changing
    raise DataError(f"train_bpe: {PAD} got id {tok.token_to_id(PAD)}, expected 0")
  return tok


def check_train_vocab_size(vocab_size: int, special_tokens: Sequence[str] = SPECIAL_TOKENS) -> None:
  """A byte-level BPE needs room for all 256 byte symbols and the special tokens before any merge."""
  smallest = len(pre_tokenizers.ByteLevel.alphabet()) + len(special_tokens)
  if vocab_size < smallest:
    raise DataError(f"train_bpe: vocab_size={vocab_size} is below the 256 byte symbols plus {len(special_tokens)} "
                    f"special tokens; use vocab_size >= {smallest}")


def vocab_size(tokenizer: Tokenizer) -> int:
  """Rows an embedding table needs for this tokenizer: one past its largest id (added tokens included)."""
  ids = tokenizer.get_vocab(with_added_tokens=True).values()
  return max(tokenizer.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)


def check_vocab(tokenizer: Tokenizer, model_vocab_size: int, where: str) -> None:
  """Raise if the tokenizer can emit ids the model's embedding table does not have."""
  n = vocab_size(tokenizer)
  if n > model_vocab_size:
    raise DataError(f"{where}: the tokenizer has {n} tokens but the model's vocab_size is {model_vocab_size}; "
                    f"set the model's vocab_size to at least {n}, or train a tokenizer with vocab_size <= "
                    f"{model_vocab_size}")


def special_id(tokenizer: Tokenizer, name: str) -> int:
  """The id of a token such as "<|eos|>"."""
  i = tokenizer.token_to_id(name)
  if i is None:
    raise DataError(f"tokenizer has no token {name!r}; its special tokens are "
                    f"{sorted(t.content for t in tokenizer.get_added_tokens_decoder().values())}")
  return i
