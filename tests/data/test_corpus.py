"""The stdlib corpus on small subsets: split rule, manifest hashes recomputed from the saved rows, determinism,
atomic builds, reuse, and the unigram entropy baseline."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter

import numpy as np
import pytest

from dsv4.data import corpus
from dsv4.data.corpus import SPLITS, build_corpus, ensure_corpus, load_corpus, module_name, unigram_entropy
from dsv4.errors import DataError

N = 40
VOCAB = 1000  # small vocab: the tokenizer trains in a fraction of a second on the subset


def _quiet(_msg):
  pass


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  out = tmp_path_factory.mktemp("c") / "corpus"
  manifest = build_corpus(out, vocab_size=VOCAB, max_files=N, log=_quiet)
  return out, manifest


def _split_by_hand(module: str) -> str:
  b = int.from_bytes(hashlib.sha256(module.encode()).digest()[:4], "big") % 100
  return "train" if b < 90 else "validation" if b < 95 else "test"


def test_module_names():
  assert module_name("email/mime/text.py") == "email.mime.text"
  assert module_name("json/__init__.py") == "json"
  assert module_name("os.py") == "os"


def test_splits_nonempty_disjoint_and_follow_the_rule(built):
  out, manifest = built
  dd, tok, loaded = load_corpus(out)
  assert loaded == manifest
  assert set(dd) == set(SPLITS)
  modules = {s: set(dd[s]["module"]) for s in SPLITS}
  assert all(modules[s] for s in SPLITS)
  assert not (modules["train"] & modules["validation"] or modules["train"] & modules["test"]
              or modules["validation"] & modules["test"])
  for s in SPLITS:
    assert dd[s].column_names == ["text", "module", "path"]
    assert dd[s]["module"] == sorted(dd[s]["module"])
    for m, p in zip(dd[s]["module"], dd[s]["path"], strict=True):
      assert _split_by_hand(m) == s
      assert module_name(p) == m
  assert sum(len(dd[s]) for s in SPLITS) == N
  assert tok.token_to_id("<|pad|>") == 0


def test_manifest_hashes_match_the_saved_rows(built):
  out, manifest = built
  dd, _, _ = load_corpus(out)
  split_hashes = {}
  for s in SPLITS:
    pairs = sorted((p, hashlib.sha256(t.encode("utf-8")).hexdigest()) for p, t in zip(dd[s]["path"], dd[s]["text"],
                                                                                       strict=True))
    h = hashlib.sha256("".join(f"{p}\t{d}\n" for p, d in pairs).encode()).hexdigest()
    assert manifest["splits"][s] == {"files": len(dd[s]), "bytes": sum(len(t.encode()) for t in dd[s]["text"]),
                                     "sha256": h}
    split_hashes[s] = h
  assert manifest["hash"] == hashlib.sha256("".join(f"{s}\t{split_hashes[s]}\n" for s in SPLITS).encode()).hexdigest()
  tok_bytes = (out / "tokenizer.json").read_bytes()
  assert manifest["tokenizer"]["sha256"] == hashlib.sha256(tok_bytes).hexdigest()
  assert manifest["tokenizer"]["requested_vocab_size"] == VOCAB
  assert manifest == json.loads((out / "manifest.json").read_text())


def test_rebuild_is_deterministic(built, tmp_path):
  _, manifest = built
  again = build_corpus(tmp_path / "again", vocab_size=VOCAB, max_files=N, log=_quiet)
  assert again["splits"] == manifest["splits"] and again["hash"] == manifest["hash"]
  assert again["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]


def test_crash_midway_leaves_nothing(tmp_path, monkeypatch):
  def boom(*args, **kwargs):
    raise RuntimeError("simulated crash while training the tokenizer")

  monkeypatch.setattr(corpus, "train_bpe", boom)
  with pytest.raises(RuntimeError, match="simulated crash"):
    build_corpus(tmp_path / "corpus", vocab_size=VOCAB, max_files=N, log=_quiet)
  assert list(tmp_path.iterdir()) == []  # neither out_dir nor the temporary sibling


def test_refuses_to_overwrite_unless_asked(built, tmp_path):
  out, _ = built
  with pytest.raises(DataError, match="already holds a corpus; pass overwrite=True"):
    build_corpus(out, vocab_size=VOCAB, max_files=N, log=_quiet)
  other = tmp_path / "other"
  other.mkdir()
  (other / "keep.txt").write_text("user data")
  with pytest.raises(DataError, match="is not empty and is not a corpus"):
    build_corpus(other, vocab_size=VOCAB, max_files=N, log=_quiet)
  rebuilt = build_corpus(other, vocab_size=VOCAB, max_files=N, log=_quiet, overwrite=True)
  assert not (other / "keep.txt").exists() and rebuilt["hash"] == load_corpus(other)[2]["hash"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_ensure_reuses_and_checks_vocab(built, monkeypatch):
  out, manifest = built
  monkeypatch.setattr(corpus, "build_corpus", lambda *a, **k: pytest.fail("ensure_corpus rebuilt an existing corpus"))
  assert ensure_corpus(out, vocab_size=VOCAB, log=_quiet) == manifest
  with pytest.raises(DataError, match=f"{VOCAB}-token tokenizer but vocab_size=8192.*delete {out}"):
    ensure_corpus(out, vocab_size=8192, log=_quiet)


def test_ensure_builds_when_missing(tmp_path, monkeypatch):
  calls, lines = [], []
  monkeypatch.setattr(corpus, "build_corpus", lambda out, **k: calls.append((out, k)) or {"built": True})
  assert ensure_corpus(tmp_path / "c", vocab_size=VOCAB, log=lines.append) == {"built": True}
  assert calls[0][0] == tmp_path / "c" and calls[0][1]["vocab_size"] == VOCAB
  assert "building the embedded stdlib corpus at" in lines[0] and "first use" in lines[0]


def test_load_missing_or_incomplete(tmp_path):
  with pytest.raises(DataError, match=f"corpus {tmp_path / 'nope'} does not exist.*scripts/build_corpus.py --out"):
    load_corpus(tmp_path / "nope")
  with pytest.raises(DataError, match="has no manifest.json"):
    load_corpus(tmp_path)


def test_bad_arguments_fail_before_reading(tmp_path, monkeypatch):
  monkeypatch.setattr(corpus, "_read", lambda *a: pytest.fail("read the stdlib before checking the arguments"))
  with pytest.raises(DataError, match="max_files=2"):
    build_corpus(tmp_path / "c", max_files=2, log=_quiet)
  with pytest.raises(DataError, match="vocab_size=100 is below"):
    build_corpus(tmp_path / "c", vocab_size=100, log=_quiet)
  assert list(tmp_path.iterdir()) == []


def test_unigram_entropy_by_hand():
  # counts 2, 1, 1 of 4 tokens: H = -(1/2 ln 1/2 + 2 * 1/4 ln 1/4) = 1.5 ln 2
  assert unigram_entropy([np.array([0, 1]), np.array([0, 3]), np.array([], np.int32)], 5) == pytest.approx(
    1.5 * math.log(2))
  assert unigram_entropy([np.array([7, 7, 7])], 8) == 0.0
  assert unigram_entropy([np.arange(16)], 16) == pytest.approx(math.log(16))


def test_unigram_entropy_matches_direct_formula():
  rng = np.random.default_rng(0)
  chunks = [rng.zipf(1.3, size=n) % 500 for n in (1, 100, 5000)]
  counts = Counter(int(t) for c in chunks for t in c)
  total = sum(counts.values())
  want = -sum(c / total * math.log(c / total) for c in counts.values())
  assert unigram_entropy(chunks, 500) == pytest.approx(want, rel=1e-12)


def test_unigram_entropy_bad_input():
  with pytest.raises(DataError, match="token id 9 is outside"):
    unigram_entropy([np.array([1, 9])], 9)
  with pytest.raises(DataError, match="no tokens"):
    unigram_entropy([], 9)
  with pytest.raises(DataError, match="integers"):
    unigram_entropy([np.array([0.5])], 9)
