"""Tables derived from an evaluation's results.json: conditional acceptance by position, and the loop's cost per
round beyond its two timed parts.

  python experiments/eval_small/round_overhead.py experiments/eval_small/results.json \
      experiments/table1_smollm2/results.json > experiments/eval_small/derived.md

Overhead per round = (T_spec − (T_AR − tokens · T_AR-step)) / rounds − (T_draft + T_verify): the AR run's time
beyond its token steps is taken as the prefill both runs pay, the rest of the speculative run is spread over its
rounds, and the round's timed parts are subtracted. Every input is a median the run recorded (T = 0, the timed
temperature).
"""

import json
import sys


def conditional_table(results) -> list[str]:
  cells = [c for c in results["cells"] if c["temperature"] == 0]
  width = max(len(c["conditional"]) for c in cells)
  lines = ["| set | drafter | γ | " + " | ".join(f"k = {k}" for k in range(1, width + 1)) + " |",
           "| --- | --- | --- | " + " | ".join("---" for _ in range(width)) + " |"]
  for c in cells:
    vals = [("—" if v is None else f"{v:.2f}") for v in c["conditional"]] + [""] * (width - len(c["conditional"]))
    lines.append(f"| {c['set']} | {c['drafter']} | {c['block_size']} | " + " | ".join(vals) + " |")
  return lines


def overhead_table(results) -> list[str]:
  lines = ["| set | drafter | γ | rounds | ms per round | parts (draft + verify) ms | overhead ms | overhead / parts |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for tm in results["timing"]:
    seconds = tm["seconds"]
    cells = {(c["drafter"], c["block_size"]): c for c in results["cells"]
             if c["set"] == tm["set"] and c["temperature"] == tm["temperature"]}
    for row in tm["rows"]:
      cell = cells[row["drafter"], row["block_size"]]
      if any("refused" in v for v in row["components_s"].values()):
        lines.append(f"| {tm['set']} | {row['drafter']} | {row['block_size']} | {cell['rounds']} | refused: a part's "
                     "time was inside the noise | | | |")
        continue
      comp = {k: v["median"] for k, v in row["components_s"].items()}
      prefill = seconds["ar"]["median"] - cell["tokens"] * comp["ar_step"]
      per_round = (seconds[f"{row['drafter']}@{row['block_size']}"]["median"] - prefill) / cell["rounds"]
      parts = comp["draft"] + comp["verify"]
      lines.append(f"| {tm['set']} | {row['drafter']} | {row['block_size']} | {cell['rounds']} | "
                   f"{per_round * 1e3:.2f} | {parts * 1e3:.2f} | {(per_round - parts) * 1e3:.2f} | "
                   f"{(per_round - parts) / parts:+.0%} |")
  return lines


def main(paths):
  for path in paths:
    with open(path) as f:
      results = json.load(f)
    print(f"## {path}\n\nConditional acceptance by draft position at T = 0:\n")
    print("\n".join(conditional_table(results)))
    print("\nThe loop's cost per round beyond its timed parts (T = 0):\n")
    print("\n".join(overhead_table(results)))
    print()


if __name__ == "__main__":
  main(sys.argv[1:])
