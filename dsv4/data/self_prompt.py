"""Self-prompting (Magpie, Xu et al. 2024): an instruct model writes the user turns it will later answer.

An aligned chat model, given only its chat template up to the opening of a user turn, writes a plausible user
query and closes it with its end-of-turn token. Those queries become distillation prompts with no dataset.

Definitions:
- Prefix of a domain: the chat template rendered for [system (the domain's system prompt, or none: the template's
  default), user = SENTINEL] without a generation prompt, cut just before SENTINEL. All rows of a batch share it, so
  a domain compiles its sampling loop once.
- Query: the tokens sampled after the prefix at `temperature`/`top_p`, up to the tokenizer's EOS (end of turn).
  Batch b of a domain samples with seed SeedSequence([seed, domain index, b]): a run is reproducible from
  (seed, batch_size, domains).
- Kept query (`query_problem` returns None): closed by EOS, stripped text of 3..`max_words` words, no chat-template
  markup, no word 4-gram seen 3 times, at least half of its words distinct, ≥ 80 % of its letters ASCII, and not
  seen before after `normalise` (case, punctuation and spacing folded). Queries that share a word 8-gram with an
  evaluation prompt are dropped as contaminated (`dsv4.data.overlap`).
- Row written: {"messages": [{"role": "user", "content": query}], "domain": name}. The domain's system prompt only
  steers what the user asks (as Magpie's domain-specific runs do); the answer is generated later with the
  template's default system turn, the context the model is evaluated in.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np

SENTINEL = "\x00QUERY\x00"
MAX_WORDS = 120


@dataclasses.dataclass(frozen=True)
class Domain:
  name: str
  system: str | None  # None: the chat template's own default system turn
  share: float        # fraction of the queries asked for


# Magpie's domain runs steer the user turn through the system prompt; these cover what the evaluation sets test
# (chat, math word problems, competition math, Python functions) without taking any text from them.
DOMAINS = (
    Domain("general", None, 0.4),
    Domain("math", "You are an AI assistant that helps users solve math word problems step by step, explaining "
           "the reasoning and giving the final answer.", 0.3),
    Domain("code", "You are an AI assistant that writes Python functions for programming tasks the user "
           "describes, with short explanations.", 0.3),
)


def user_prefix(tokenizer, system: str | None) -> str:
  """The template's text up to where the user's words start (see the module docstring)."""
  messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": SENTINEL}]
  text = tokenizer.render_chat(messages, add_generation_prompt=False)
  if text.count(SENTINEL) != 1:
    raise ValueError("the chat template does not place the user's content verbatim; cannot self-prompt with it")
  return text[:text.index(SENTINEL)]


def normalise(text: str) -> str:
  return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _words(text: str) -> list[str]:
  return normalise(text).split()


def query_problem(text: str, closed: bool, max_words: int = MAX_WORDS) -> str | None:
  """Why a sampled query is dropped (a short reason), or None to keep it. Duplicates are the caller's check."""
  if not closed:
    return "unfinished"
  words = _words(text)
  if len(words) < 3:
    return "too short"
  if len(words) > max_words:
    return "too long"
  if "<|" in text or "|>" in text:
    return "markup"
  grams = Counter(tuple(words[i:i + 4]) for i in range(len(words) - 3))
  if grams and grams.most_common(1)[0][1] >= 3:
    return "repetitive"
  if len(set(words)) < len(words) / 2:
    return "repetitive"
  letters = [c for c in text if c.isalpha()]
  if letters and sum(c.isascii() for c in letters) < 0.8 * len(letters):
    return "non-ascii"
  return None


def domain_counts(n: int, domains=DOMAINS) -> list[int]:
  """Queries asked of each domain: shares of n, rounded so they sum to n."""
  shares = np.array([d.share for d in domains], float)
  raw = n * shares / shares.sum()
  counts = np.floor(raw).astype(int)
  counts[np.argsort(raw - counts)[::-1][:n - counts.sum()]] += 1
  return counts.tolist()


def batch_seed(seed: int, domain: int, batch: int) -> int:
  return int(np.random.SeedSequence([seed, domain, batch]).generate_state(1)[0])


__all__ = ["DOMAINS", "Domain", "MAX_WORDS", "batch_seed", "domain_counts", "normalise", "query_problem",
           "user_prefix"]
