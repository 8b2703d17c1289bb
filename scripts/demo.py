"""`make demo`: the committed `small` V4-style target continuing held-out Python standard-library code.

Loads the target shipped in assets/targets/small (pretrained here with scripts/train_target.py; see its
provenance.json), takes the opening of modules from the corpus's held-out test split (building the embedded
corpus first if needed: 15–17 s of wall time on 2 shared CPU cores), and lets the target continue them greedily.
Then the speculative stage: a trained DSpark drafter (assets/drafters/small-dspark, exported with
scripts/export_drafter.py; see its provenance.json) drafts for the same target on held-out code cut at function
bodies; tokens/s of speculative decoding and of dsv4 AR, τ, and the accepted drafts marked in the text, plus a PNG
of conditional acceptance by draft position (runs/demo/conditional_acceptance.png).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsv4.data.corpus import DEFAULT_CORPUS_DIR, ensure_corpus, load_corpus  # noqa: E402
from dsv4.data.tokenizer import load_tokenizer  # noqa: E402
from dsv4.evaluation.spec_demo import run_stage  # noqa: E402
from dsv4.inference.generate import generate  # noqa: E402
from dsv4.io.hf import from_pretrained  # noqa: E402

TARGET = Path(__file__).resolve().parents[1] / "assets" / "targets" / "small"
DRAFTER = Path(__file__).resolve().parents[1] / "assets" / "drafters" / "small-dspark"
PNG = Path("runs/demo/conditional_acceptance.png")
PROMPT_TOKENS, NEW_TOKENS, N_PROMPTS = 96, 64, 2


def bold(text: str) -> str:
  """Bold on a terminal only: piped output (a log file, `| less`) gets plain text, not escape codes."""
  return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else f"[{text}]"


def main():
  argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
  provenance = json.loads((TARGET / "provenance.json").read_text())
  print(f"target: {TARGET} ({provenance['params'] / 1e6:.1f}M params, {provenance['tokens_seen'] / 1e6:.1f}M "
        f"training tokens, validation CE {provenance['val_loss']:.3f} nats = "
        f"{100 * provenance['val_loss_over_unigram_entropy']:.0f}% of the corpus unigram entropy)")
  model = from_pretrained(TARGET)
  tokenizer = load_tokenizer(TARGET)
  ensure_corpus(DEFAULT_CORPUS_DIR)
  corpus, _, _ = load_corpus(DEFAULT_CORPUS_DIR)
  held_out = [row for row in corpus["test"] if len(row["text"]) > 2000][:N_PROMPTS]
  prompts = [tokenizer.encode(row["text"]).ids[:PROMPT_TOKENS] for row in held_out]
  t0 = time.time()
  outputs = generate(model, prompts, NEW_TOKENS)
  seconds = time.time() - t0
  for row, prompt, out in zip(held_out, prompts, outputs, strict=True):
    print(f"\n=== {row['path']} (held out) — prompt tail, then the target's greedy continuation ===")
    print(tokenizer.decode(prompt[-32:]) + bold(tokenizer.decode(out)))
  print(json.dumps({"target": str(TARGET), "prompts": len(prompts), "new_tokens": sum(map(len, outputs)),
                    "seconds_incl_compile": round(seconds, 1), "val_loss": provenance["val_loss"]}))
  PNG.parent.mkdir(parents=True, exist_ok=True)
  t0 = time.time()
  stage = run_stage(model, tokenizer, DRAFTER, DEFAULT_CORPUS_DIR, PNG, bold)
  print(json.dumps({"drafter": str(DRAFTER), "tau": round(stage["tau"], 3), "tau_prob": stage["tau_prob"],
                    "tokens_per_s_ar": [round(r["tokens_per_s_ar"], 1) for r in stage["prompts"]],
                    "tokens_per_s_speculative": [round(r["tokens_per_s_spec"], 1) for r in stage["prompts"]],
                    "matches_ar": all(r["matches_ar"] for r in stage["prompts"]), "png": stage["png"],
                    "seconds_incl_compile": round(time.time() - t0, 1)}))


if __name__ == "__main__":
  main()
