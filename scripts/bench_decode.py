"""Benchmark: our jitted decode against transformers' greedy `generate`, same random weights and prompts.

  python scripts/bench_decode.py --config configs/target/small.py [--out experiments/bench_decode]

Both sides generate greedily from the same prompt; each is timed with max_new_tokens=1 (≈ prefill) and
max_new_tokens=N, after a warm-up, median of --repeats runs, in one process. Per-token decode time is
(t_N − t_1) / (N − 1). Prints a table and a final JSON line with `decode_speedup_vs_transformers`
(transformers' per-token decode time / ours).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import dsv4  # noqa: E402
from dsv4.benchmarking import write_results  # noqa: E402
from dsv4.configs import load_config, model_config  # noqa: E402
from dsv4.io.hf import save_pretrained  # noqa: E402


def timed(fn, repeats):
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/target/small.py")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="folder to write results.md into")
  args = p.parse_args(argv)
  if args.repeats < 3:
    p.error("--repeats must be ≥ 3 (the metric is a median of ≥ 3 runs)")

  import torch
  from transformers import DeepseekV4ForCausalLM

  cfg = model_config(load_config(args.config)).replace(num_nextn_predict_layers=0)
  ours = dsv4.Transformer(cfg, rngs=nnx.Rngs(args.seed))
  with tempfile.TemporaryDirectory() as tmp:
    save_pretrained(ours, Path(tmp) / "model")
    theirs = DeepseekV4ForCausalLM.from_pretrained(Path(tmp) / "model").eval()
  prompt = np.random.default_rng(args.seed).integers(2, cfg.vocab_size, args.prompt_len).tolist()
  N = args.new_tokens

  def ours_gen(n):
    return lambda: dsv4.generate(ours, [prompt], max_new_tokens=n)[0]

  def theirs_gen(n):
    def run():
      with torch.no_grad():
        out = theirs.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
      return out[0, len(prompt):].tolist()
    return run

  o1, _ = timed(ours_gen(1), args.repeats)
  oN, ours_tokens = timed(ours_gen(N), args.repeats)
  t1, _ = timed(theirs_gen(1), args.repeats)
  tN, theirs_tokens = timed(theirs_gen(N), args.repeats)
  ours_tok, theirs_tok = (oN - o1) / (N - 1), (tN - t1) / (N - 1)
  rows = [("prefill + 1 token (s)", o1, t1), (f"generate {N} tokens (s)", oN, tN),
          ("per-token decode (ms)", 1e3 * ours_tok, 1e3 * theirs_tok)]
  table = ["| measure | dsv4 | transformers | ratio |", "| --- | --- | --- | --- |"]
  table += [f"| {name} | {a:.4g} | {b:.4g} | {b / a:.2f}× |" for name, a, b in rows]
  match = sum(a == b for a, b in zip(ours_tokens, theirs_tokens, strict=False))
  result = {"config": args.config, "prompt_len": args.prompt_len, "new_tokens": N, "repeats": args.repeats,
            "ours_prefill_s": round(o1, 4), "transformers_prefill_s": round(t1, 4),
            "ours_decode_ms_per_token": round(1e3 * ours_tok, 3),
            "transformers_decode_ms_per_token": round(1e3 * theirs_tok, 3),
            "prefill_speedup_vs_transformers": round(t1 / o1, 3),
            "generate_speedup_vs_transformers": round(tN / oN, 3),
            "decode_speedup_vs_transformers": round(theirs_tok / ours_tok, 3),
            "greedy_tokens_matching": f"{match}/{N}"}
  print("\n".join(table))
  if args.out:
    write_results(args.out, "scripts/bench_decode.py", argv,
                  f"Same random weights and prompt, greedy, batch 1, median of {args.repeats} after warm-up, one "
                  "process, CPU.", table, result, extra=f"Greedy tokens matching: {match}/{N}.")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
