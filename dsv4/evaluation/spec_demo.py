"""The demo's speculative stages: a trained DSpark drafter against dsv4 AR on the same prompts, side by side.

Used for the `small` target on held-out code (corpus modules cut at a function body) and for SmolLM2-135M-Instruct
on chat prompts written for the demo, rendered through its chat template. For each prompt, greedy speculative
decoding and AR decoding are timed interleaved through `dsv4.benchmarking` (5 repetitions after warm-up, medians),
their tokens/s printed with τ and the speedup, and the continuation printed with every accepted draft marked (the
tokens the target only verified); unmarked tokens are the target's own (the first token, and each round's
correction or bonus). The two outputs are checked equal (greedy speculative decoding is lossless). A PNG shows
conditional acceptance by draft position over the prompts' pooled rounds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from dsv4.benchmarking import time_interleaved
from dsv4.inference.metrics import AcceptanceStats


def marked_pieces(out: list[int], stats: dict) -> list[tuple[list[int], bool]]:
  """The output of one prompt (batch 1) as (tokens, accepted-draft?) runs, from the per-round record: the first
  token, then per round its accepted drafts and, when it has one, the target's own token."""
  pieces, i = [(out[:1], False)], 1
  for a, b in zip(stats["round_accepted"], stats["round_bonus"], strict=True):
    a, b = int(a), int(b)
    if a:
      pieces.append((out[i:i + a], True))
    if b:
      pieces.append((out[i + a:i + a + b], False))
    i += a + b
  if i != len(out):
    raise ValueError(f"the round record covers {i} tokens but the output has {len(out)}.")
  return pieces


def render_marked(tokenizer, out, stats, mark: Callable[[str], str]) -> str:
  return "".join(mark(tokenizer.decode(toks)) if drafted else tokenizer.decode(toks)
                 for toks, drafted in marked_pieces(out, stats))


def run_stage(target, tokenizer, drafter_dir, ps, png: Path, mark: Callable[[str], str], *, new_tokens=64,
              repeats=5, eos_id=None, prompt_tail=24, prompt_bucket=1, title="DSpark", log=print) -> dict:
  """Prints the stage for the prompts of `ps` (a `dsv4.evaluation.prompt_sets.PromptSet`) and returns its summary
  (per prompt tokens/s of both, τ, speedup; the pooled τ; the PNG path). `eos_id` defaults to the target's;
  `prompt_tail` tokens of each prompt are printed before its continuation (0: none); `prompt_bucket` pads the
  prompt buffers (one compilation for all the prompts)."""
  import json

  import dsv4
  from dsv4.evaluation.eval_report import plot_conditional

  drafter = dsv4.load_drafter(drafter_dir, target=target)
  prov_path = Path(drafter_dir) / "provenance.json"
  prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
  log(f"\ndrafter: {drafter_dir} ({drafter.config.kind}, γ = {drafter.config.block_size}, step {drafter.step}; "
      f"held-out τ_prob {prov.get('tau_prob', float('nan')):.3f}, a T = 1 figure)")
  eos = target.config.eos_token_id if eos_id is None else eos_id
  rounds, per_prompt = [], []
  kw = dict(eos_id=eos, prompt_bucket=prompt_bucket)
  for prompt, source in zip(ps.prompts, ps.sources, strict=True):
    spec = lambda p=prompt: dsv4.speculative_generate(target, drafter, [p], new_tokens, **kw)  # noqa: E731
    ar = lambda p=prompt: dsv4.generate(target, [p], new_tokens, **kw)  # noqa: E731
    out, stats = spec()
    same = ar()[0] == out[0]
    t = time_interleaved({"ar": ar, "speculative": spec}, repeats, on_high_load="warn")
    n = len(out[0])
    row = {"source": source, "tokens": n, "tau": stats["tau"], "matches_ar": same,
           "tokens_per_s_ar": n / t.estimate("ar").value, "tokens_per_s_spec": n / t.estimate("speculative").value}
    row["speedup"] = row["tokens_per_s_spec"] / row["tokens_per_s_ar"]
    per_prompt.append(row)
    rounds.append(stats)
    log(f"\n=== {source}: dsv4 AR {row['tokens_per_s_ar']:.1f} tok/s, DSpark {row['tokens_per_s_spec']:.1f} tok/s "
        f"({row['speedup']:.2f}×), τ {stats['tau']:.2f}, output = AR: {same} ===")
    head = tokenizer.decode(prompt[-prompt_tail:]) if prompt_tail else ""
    log(head + render_marked(tokenizer, out[0], stats, mark))
  acc = AcceptanceStats.from_rounds([s["round_accepted"] for s in rounds], [s["round_proposed"] for s in rounds],
                                    [s["round_bonus"] for s in rounds])
  cell = {"set": ps.name, "drafter": "dspark", "block_size": drafter.config.block_size, "temperature": 0.0,
          **acc.to_dict()}
  plot_conditional([cell], png, title=f"{title}: conditional acceptance by draft position (T = 0)")
  log(f"\nmarked: {mark('accepted drafts')} (the target verified them); the rest is the target's own tokens. "
      f"Pooled τ {acc.tau:.2f} at T = 0 (τ_prob predicts T = 1). Plot: {png}")
  return {"tau": acc.tau, "prompts": per_prompt, "png": str(png), "tau_prob": prov.get("tau_prob"),
          "speedup": float(np.median([r["speedup"] for r in per_prompt]))}
