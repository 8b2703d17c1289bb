"""Contamination report: how many rows of a regenerated training set share text with evaluation prompt sets.

  python scripts/check_overlap.py --data data/smollm2/regen --tokenizer smollm2-135m-instruct \\
      --eval_sets=../shared/datasets/{gsm8k,math500,humaneval,mbpp,mt-bench}.jsonl [--out DIR]

Each row's prompt part (target_mask 0) and response part (target_mask 1) are decoded and checked separately against
every turn of every set, by exact match and by shared word 8-grams after folding case, punctuation and spacing
(dsv4.data.overlap). Prints a table per split and ends with one JSON line; --out also writes DIR/overlap.json.
"""

import json
import sys
from pathlib import Path

from absl import flags

from dsv4 import cli

_DATA = flags.DEFINE_string("data", None, "a regenerated dataset directory (datasets.load_from_disk layout)")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "tokenizer.json, a model directory, or a GGUF model name")
_EVAL_SETS = flags.DEFINE_multi_string("eval_sets", None, "an evaluation prompt set (jsonl with `turns`); one flag "
                                       "per set: --eval_sets=DIR/{gsm8k,mbpp}.jsonl expands to two in bash")
_OUT = flags.DEFINE_string("out", None, "also write DIR/overlap.json")
flags.mark_flags_as_required(["data", "tokenizer", "eval_sets"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; give each evaluation set its own --eval_sets "
             "(--eval_sets=DIR/{gsm8k,mbpp}.jsonl expands to two in bash)")
  data, eval_sets, out = _DATA.value, _EVAL_SETS.value, _OUT.value
  import datasets

  from dsv4.data.overlap import EvalIndex
  from dsv4.data.tokenizer import load_tokenizer
  from dsv4.errors import Dsv4Error
  try:
    tok = load_tokenizer(_TOKENIZER.value)
    index = EvalIndex.from_jsonl(eval_sets)
  except (Dsv4Error, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  if not Path(data, "dataset_dict.json").is_file():
    sys.exit(f"error: {data} holds no regenerated dataset (no dataset_dict.json)")
  dd = datasets.load_from_disk(data)
  report = {}
  for split, ds in dd.items():
    prompts, responses = [], []
    for row in ds:
      ids, mask = row["ids"], row["target_mask"]
      prompts.append(tok.decode([i for i, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=True))
      responses.append(tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=True))
    report[split] = {"prompts": index.report(prompts), "responses": index.report(responses)}
  print("| split | part | rows | overlapping | " + " | ".join(f"{n} exact / 8-gram" for n in index.names) + " |")
  print("| --- | --- | --- | --- | " + " | ".join("---" for _ in index.names) + " |")
  for split, parts in report.items():
    for part, r in parts.items():
      cells = " | ".join(f"{r['per_set'][n]['exact']} / {r['per_set'][n]['8-gram']}" for n in index.names)
      print(f"| {split} | {part} | {r['texts']} | {r['overlapping']} | {cells} |")
  result = {"data": str(Path(data).absolute()), "eval_sets": [str(Path(s).absolute()) for s in eval_sets],
            "report": report}
  if out:
    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "overlap.json").write_text(json.dumps(result, indent=2) + "\n")
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
