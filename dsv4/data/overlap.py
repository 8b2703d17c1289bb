"""Contamination check: word 8-grams and exact matches shared between training text and evaluation prompts.

Text is compared after `self_prompt.normalise` (case, punctuation and spacing folded) as words. A training text
overlaps an evaluation set when it equals one of its prompts (exact) or shares any word 8-gram with one; a text
shorter than 8 words can only overlap exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from dsv4.data.self_prompt import normalise

N = 8


def ngrams(text: str, n: int = N) -> set[tuple[str, ...]]:
  words = normalise(text).split()
  return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class EvalIndex:
  """The exact texts and 8-grams of every turn of some evaluation prompt sets, by set name."""

  def __init__(self, sets: dict[str, list[str]]):
    self.names = list(sets)
    self.exact = {name: {normalise(t) for t in texts} for name, texts in sets.items()}
    self.grams = {name: set().union(*(ngrams(t) for t in texts)) if texts else set() for name, texts in sets.items()}

  @classmethod
  def from_jsonl(cls, paths: Iterable[str | Path], field: str = "turns") -> EvalIndex:
    """Sets from `{"turns": [...]}` jsonl files (every turn counts), named by file stem."""
    sets = {}
    for path in map(Path, paths):
      if not path.is_file():
        raise FileNotFoundError(f"evaluation prompt set {path}: no such file; pass the jsonl files the evaluation "
                                "uses (e.g. ../shared/datasets/*.jsonl)")
      texts = []
      for line in path.read_text().splitlines():
        if line.strip():
          value = json.loads(line)[field]
          texts += value if isinstance(value, list) else [value]
      sets[path.stem] = texts
    return cls(sets)

  def hits(self, text: str) -> dict[str, str]:
    """{set name: "exact" or "8-gram"} for each set the text overlaps."""
    norm, grams = normalise(text), ngrams(text)
    out = {}
    for name in self.names:
      if norm in self.exact[name]:
        out[name] = "exact"
      elif grams & self.grams[name]:
        out[name] = "8-gram"
    return out

  def report(self, texts: Iterable[str]) -> dict:
    """Counts of texts overlapping each set, exactly or by an 8-gram, and of texts overlapping any."""
    per_set = {name: {"exact": 0, "8-gram": 0} for name in self.names}
    total = overlapping = 0
    for text in texts:
      total += 1
      hits = self.hits(text)
      overlapping += bool(hits)
      for name, kind in hits.items():
        per_set[name][kind] += 1
    return {"texts": total, "overlapping": overlapping, "per_set": per_set, "ngram": N}


__all__ = ["EvalIndex", "N", "ngrams"]
