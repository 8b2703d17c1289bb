"""Evaluate drafters against the target: acceptance (τ, survival, conditional acceptance), speedup over dsv4 AR
and loop efficiency, on prompt sets, several drafters side by side, over block sizes and temperatures.

  python scripts/evaluate.py --config configs/eval/small.py
  python scripts/evaluate.py --config configs/eval/small.py --config.out_dir=runs/eval-x \\
      --config.drafters='(("dspark","/work/runs/dspark-small"),)' --config.block_sizes='(None,4,2)'

Writes OUT_DIR/results.json, results.csv, tensorboard/, *.png, prints a table, and ends with one JSON line:
{"drafters": {name: {"tau", "speedup", "loop_efficiency", "tau_T1_trained_block", "tau_prob", ...}}}.
Ctrl-C stops the run and writes what was finished (every acceptance cell and timed set), marked "interrupted".
See dsv4.evaluation.harness for what is measured and how.
"""

import sys

from ml_collections import config_flags

from dsv4 import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "evaluation config (configs/eval/*.py[:variant])")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; use --config=... and --config.<field>=...")
  from dsv4.errors import Dsv4Error
  from dsv4.evaluation import eval_report
  from dsv4.evaluation.harness import evaluate
  config = _CONFIG.value
  try:
    results = evaluate(config, log=lambda s: print(s, flush=True))
  except Dsv4Error as e:
    sys.exit(f"error: {e}")
  eval_report.write_all(results, config.out_dir)
  print(eval_report.final_line(results), flush=True)
  if results.get("interrupted"):  # the finished part is written; say so and exit as an interrupted command does
    print(f"{results['interrupted']} (in {config.out_dir})", file=sys.stderr, flush=True)
    sys.exit(130)


if __name__ == "__main__":
  cli.run(main)
