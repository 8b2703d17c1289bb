"""A resumable self-prompting run: sample user queries per domain in batches, filter them, write a prompt file.

Output (OUT is a directory): OUT/prompts.jsonl (one chat row per kept query, in domain order, the rows
`regenerate.py --prompts OUT/prompts.jsonl --prompt_field messages` reads) and OUT/provenance.json (model,
sampler, domains, counts of each drop reason, the contamination report). Both are written to temporary siblings and
renamed into place, provenance last, so OUT/provenance.json marks a finished run.

Interrupts: every sampled batch (before filtering) is appended to OUT/.partial.jsonl under a header naming the run
(model, sampler, domains, size); a re-run with the same settings replays those batches through the same filter
and samples only the rest, so its output equals an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from dsv4.data.append_log import AppendLog, write_atomic
from dsv4.data.overlap import EvalIndex
from dsv4.data.self_prompt import DOMAINS, batch_seed, domain_counts, normalise, query_problem, user_prefix
from dsv4.errors import DataError

PROMPTS = "prompts.jsonl"
PROVENANCE = "provenance.json"
PARTIAL = ".partial.jsonl"
MAX_BATCHES_PER_NEEDED = 8  # give up on a domain whose queries are this many batches short of its count


@dataclasses.dataclass(frozen=True)
class QuerySampler:
  num_prompts: int = 2048
  batch_size: int = 32
  max_query_tokens: int = 64
  temperature: float = 1.0
  top_p: float = 1.0
  seed: int = 0

  def check(self) -> None:
    for name in ("num_prompts", "batch_size", "max_query_tokens"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise DataError(f"self-prompt: {name} must be a positive int, got {getattr(self, name)!r}")
    if not self.temperature > 0:
      raise DataError(f"self-prompt: temperature must be > 0 (greedy would write one query), got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise DataError(f"self-prompt: top_p must be in (0, 1], got {self.top_p!r}")


def check_inputs(out: str | os.PathLike, sampler: QuerySampler, eval_sets=()) -> None:
  """The checks that need no model: the sampler, an OUT without a finished run, the evaluation sets exist."""
  sampler.check()
  if (Path(out) / PROVENANCE).is_file():
    raise DataError(f"self-prompt: {out} already holds a finished run ({PROVENANCE}); choose another --out")
  for path in map(Path, eval_sets):
    if not path.is_file():
      raise DataError(f"self-prompt: evaluation prompt set {path}: no such file; pass the jsonl files the "
                      "evaluation uses (e.g. ../shared/datasets/*.jsonl)")


def filter_batch(queries: list, room: int, seen: set[str], index: EvalIndex | None, drops: Counter) -> list[str]:
  """The kept queries of one sampled batch ([text, closed by EOS, tokens] each), stripped, in order, at most `room`
  of them. Adds each kept query's `normalise`d text to `seen` (later copies are duplicates) and counts each
  dropped one in `drops` by reason; queries after the `room`-th kept one are not looked at."""
  kept = []
  for text, closed, _ in queries:
    if len(kept) == room:
      break
    text = text.strip()
    reason = query_problem(text, closed)
    if reason is None and normalise(text) in seen:
      reason = "duplicate"
    if reason is None and index is not None and index.hits(text):
      reason = "overlaps an evaluation prompt"
    if reason is not None:
      drops[reason] += 1
      continue
    seen.add(normalise(text))
    kept.append(text)
  return kept


def self_prompt(model, tokenizer, out: str | os.PathLike, sampler: QuerySampler = QuerySampler(), *,
                eval_sets: list[str | os.PathLike] = (), model_name: str = "", domains=DOMAINS,
                log: Callable[[str], None] = print) -> dict:
  """Writes OUT/prompts.jsonl and OUT/provenance.json (see the module docstring); returns the provenance."""
  from dsv4.inference.generate import generate

  check_inputs(out, sampler, eval_sets)
  out = Path(out)
  index = EvalIndex.from_jsonl(eval_sets) if eval_sets else None
  prefixes = [tokenizer.encode(user_prefix(tokenizer, d.system), add_special_tokens=False) for d in domains]
  eos = tokenizer.eos_id
  key = hashlib.sha256(json.dumps({"model": model_name, "sampler": dataclasses.asdict(sampler), "eos": eos,
                                   "domains": [dataclasses.asdict(d) for d in domains], "prefixes": prefixes},
                                  sort_keys=True).encode()).hexdigest()
  out.mkdir(parents=True, exist_ok=True)
  partial = out / PARTIAL
  batches = AppendLog(partial, key, log)
  replay = {(r["domain"], r["batch"]): r for r in batches.records}
  if replay:
    log(f"resuming: {len(replay)} sampled batches kept in {partial}")
  t0 = time.time()
  seen: set[str] = set()
  rows, drops, per_domain = [], Counter(), {}
  sampled_tokens = 0
  for di, (domain, want) in enumerate(zip(domains, domain_counts(sampler.num_prompts, domains), strict=True)):
    kept, b = 0, 0
    while kept < want:
      if b >= MAX_BATCHES_PER_NEEDED * max(1, -(-want // sampler.batch_size)):
        log(f"domain {domain.name}: only {kept} of {want} queries kept after {b} batches; moving on")
        break
      record = replay.get((di, b))
      if record is None:
        new = generate(model, [prefixes[di]] * sampler.batch_size, sampler.max_query_tokens,
                       temperature=sampler.temperature, top_p=sampler.top_p, seed=batch_seed(sampler.seed, di, b),
                       eos_id=eos)
        record = {"domain": di, "batch": b, "queries": [[tokenizer.decode(ids[:-1] if ids and ids[-1] == eos else ids),
                                                         bool(ids) and ids[-1] == eos, len(ids)] for ids in new]}
        batches.append(record)
        log(f"domain {domain.name} batch {b}: {kept} of {want} kept so far, {time.time() - t0:.0f} s")
      sampled_tokens += sum(n_tokens for _, _, n_tokens in record["queries"])
      texts = filter_batch(record["queries"], want - kept, seen, index, drops)
      rows += [{"messages": [{"role": "user", "content": text}], "domain": domain.name} for text in texts]
      kept += len(texts)
      b += 1
    per_domain[domain.name] = {"kept": kept, "asked": want, "batches": b}
  write_atomic(out / PROMPTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  provenance = {
    "kind": "dsv4.self_prompt", "method": "Magpie (Xu et al. 2024): the model writes the user turn after its "
    "chat template's user header", "model": model_name, "eos_id": eos,
    "sampler": dataclasses.asdict(sampler), "domains": [dataclasses.asdict(d) for d in domains],
    "per_domain": per_domain, "rows": len(rows), "sampled_query_tokens": sampled_tokens,
    "dropped": dict(drops), "eval_sets": [str(Path(p).absolute()) for p in eval_sets],
    "contamination_after_filter": index.report(r["messages"][0]["content"] for r in rows) if index else None,
    "seconds_this_call": round(time.time() - t0, 1),
    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
  }
  write_atomic(out / PROVENANCE, json.dumps(provenance, indent=2) + "\n")
  partial.unlink(missing_ok=True)
  return provenance


__all__ = ["PROMPTS", "PROVENANCE", "QuerySampler", "check_inputs", "filter_batch", "self_prompt"]
