"""Byte-level BPE: exact round trip on real stdlib code, pad id 0, special ids, vocab checks, loading."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from dsv4.data.tokenizer import SPECIAL_TOKENS, check_vocab, load_tokenizer, special_id, train_bpe, vocab_size
from dsv4.errors import DataError

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# Indented code, non-ASCII text (fractions, unicode identifiers) and CRLF line ends (crlf.py); distributions that
# strip the test packages lack the last two, hence the skip of absent files.
ROUNDTRIP_FILES = ("textwrap.py", "json/decoder.py", "email/mime/text.py", "fractions.py",
                   "test/test_unicode_identifiers.py", "lib2to3/tests/data/crlf.py")


def _read(rel: str) -> str:
  return (STDLIB / rel).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tok():
  texts = [_read(f)[:4000] for f in ("textwrap.py", "json/encoder.py", "argparse.py")]  # a few KB of real code
  return train_bpe(texts, vocab_size=600)


def test_roundtrip_exact_on_stdlib_files(tok):
  files = [STDLIB / f for f in ROUNDTRIP_FILES if (STDLIB / f).is_file()]
  assert len(files) >= 4
  for f in files:
    text = f.read_text(encoding="utf-8")
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text, f


def test_roundtrip_whitespace_and_unicode(tok):
  for text in ("        return x\n\n\n    def f():\n\tpass\r\n", "   \n \t \n", "naïve = 'ü→字' # 🙂\n", ""):
    assert tok.decode(tok.encode(text).ids) == text


def test_indentation_runs_become_tokens(tok):
  # runs of spaces are merged, not spelled one byte at a time: 8 spaces of indent take far fewer than 8 tokens
  assert len(tok.encode("        x").ids) < 5


def test_pad_is_zero_and_specials_first(tok):
  assert special_id(tok, "<|pad|>") == 0
  assert [special_id(tok, t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
  assert vocab_size(tok) <= 600


def test_special_id_missing(tok):
  with pytest.raises(DataError, match="no token '<\\|nope\\|>'"):
    special_id(tok, "<|nope|>")


def test_check_vocab(tok):
  n = vocab_size(tok)
  check_vocab(tok, n, "cfg")
  check_vocab(tok, n + 100, "cfg")
  with pytest.raises(DataError, match=rf"cfg: the tokenizer has {n} tokens but the model's vocab_size is {n - 1}"):
    check_vocab(tok, n - 1, "cfg")


def test_bad_training_arguments():
  with pytest.raises(DataError, match="must start with '<\\|pad\\|>'"):
    train_bpe(["x"], 300, special_tokens=("<|bos|>", "<|pad|>"))
  with pytest.raises(DataError, match="use vocab_size >= 261"):
    train_bpe(["x"], 100)


def test_load_from_file_and_dir(tok, tmp_path):
  tok.save(str(tmp_path / "tokenizer.json"))
  text = _read("textwrap.py")[:2000]
  for path in (tmp_path / "tokenizer.json", tmp_path, str(tmp_path)):
    assert load_tokenizer(path).encode(text).ids == tok.encode(text).ids


def test_load_missing(tmp_path):
  with pytest.raises(DataError, match=f"{tmp_path / 'nope.json'} does not exist"):
    load_tokenizer(tmp_path / "nope.json")
  with pytest.raises(DataError, match=f"{tmp_path} has no tokenizer.json"):
    load_tokenizer(tmp_path)
  (tmp_path / "tokenizer.json").write_text("{not json")
  with pytest.raises(DataError, match="is not a valid tokenizers JSON file"):
    load_tokenizer(tmp_path)
