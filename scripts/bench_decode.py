"""Benchmark: our jitted decode against transformers' greedy `generate`, same random weights and prompt.

  python scripts/bench_decode.py --config configs/target/small.py [--out experiments/bench_decode]

Both sides generate greedily from the same prompt, with max_new_tokens=1 (≈ prefill) and max_new_tokens=N. The
four runs are timed interleaved (dsv4 1, dsv4 N, transformers 1, transformers N, repeated) after a warm-up, through
`dsv4.benchmarking`; torch gets as many threads as JAX's cores and runs while JAX is idle (or, with
--peer_process, in its own process). Per-token decode time is (t_N − t_1) / (N − 1) within each repetition; a
repetition where it is ≤ 0 makes the figure refused, not printed. Ratios are transformers / dsv4, ratio of medians
with the spread of the per-repetition ratios, refused when that spread includes 1. Prints a table and a final JSON
line with `decode_speedup_vs_transformers` (and the prefill and whole-generate ratios) as {median, min, max, q1, q3,
n} or {refused: reason}.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from flax import nnx

import dsv4
from dsv4 import benchmarking as bm
from dsv4.configs import load_config, model_config
from dsv4.io.hf import save_pretrained


def transformers_generate(model_dir: str, prompt: list, n: int):
  """A no-argument greedy `generate` of n tokens by transformers' DeepseekV4ForCausalLM loaded from model_dir
  (module level, so a `ProcessVariant` can build it in its own process)."""
  import torch
  from transformers import DeepseekV4ForCausalLM

  model = DeepseekV4ForCausalLM.from_pretrained(model_dir).eval()
  ids = torch.tensor([prompt])

  def run():
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0, len(prompt):].tolist()
  return run


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/target/small.py")
  p.add_argument("--prompt_len", type=int, default=128)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--peer_process", action="store_true", help="run transformers in its own process")
  p.add_argument("--allow_load", action="store_true", help="record results even on a busy machine")
  p.add_argument("--out", default=None, help="folder to write results.md into")
  args = p.parse_args(argv)
  if args.repeats < bm.MIN_REPEATS:
    p.error(f"--repeats must be ≥ {bm.MIN_REPEATS} (a median with its spread)")
  if args.new_tokens < 2:
    p.error("--new_tokens must be ≥ 2 (the per-token time is (t_N − t_1) / (N − 1))")

  cfg = model_config(load_config(args.config)).replace(num_nextn_predict_layers=0)
  ours = dsv4.Transformer(cfg, rngs=nnx.Rngs(args.seed))
  prompt = np.random.default_rng(args.seed).integers(2, cfg.vocab_size, args.prompt_len).tolist()
  N = args.new_tokens
  log = lambda m: print(f"[bench_decode] {m}", file=sys.stderr, flush=True)  # noqa: E731
  with tempfile.TemporaryDirectory() as tmp:
    model_dir = str(Path(tmp) / "model")
    save_pretrained(ours, model_dir)
    variants = {f"dsv4 {n}": (lambda n=n: dsv4.generate(ours, [prompt], max_new_tokens=n)[0]) for n in (1, N)}
    peers = {}
    for n in (1, N):
      peers[f"transformers {n}"] = (bm.ProcessVariant(transformers_generate, (model_dir, prompt, n))
                                    if args.peer_process else transformers_generate(model_dir, prompt, n))
    try:
      with bm.torch_threads():
        timings = bm.time_interleaved({**variants, **peers}, args.repeats,
                                      on_high_load=bm.load_mode(bool(args.out), args.allow_load), log=log)
        ours_tokens, theirs_tokens = variants[f"dsv4 {N}"](), peers[f"transformers {N}"]()
    finally:
      for peer in peers.values():
        if isinstance(peer, bm.ProcessVariant):
          peer.close()

  s = timings.samples
  per_token = {who: timings.difference(f"{who} {N}", f"{who} 1", 1e3 / (N - 1), f"{who} per-token decode time")
               for who in ("dsv4", "transformers")}
  rows, result = [], {"config": args.config, "prompt_len": args.prompt_len, "new_tokens": N,
                      "repeats": args.repeats, "peer": "process" if args.peer_process else "in-process",
                      **{k: v for k, v in timings.to_dict().items() if k != "seconds"}}
  for label, key, a, b in (("prefill + 1 token (s)", "prefill", s["dsv4 1"], s["transformers 1"]),
                           (f"generate {N} tokens (s)", "generate", s[f"dsv4 {N}"], s[f"transformers {N}"]),
                           ("per-token decode (ms)", "decode", per_token["dsv4"], per_token["transformers"])):
    (ca, ja), (cb, jb) = bm.time_figure(a), bm.time_figure(b)
    cr, jr = bm.ratio_figure(b, a, f"{key}: transformers / dsv4")
    rows.append((label, ca, cb, cr))
    unit = "ms_per_token" if key == "decode" else "s"
    result.update({f"ours_{key}_{unit}": ja, f"transformers_{key}_{unit}": jb,
                   f"{key}_speedup_vs_transformers": jr})
  table = bm.markdown_table(("measure", "dsv4", "transformers", "transformers / dsv4"), rows)
  match = sum(a == b for a, b in zip(ours_tokens, theirs_tokens, strict=False))
  result["greedy_tokens_matching"] = f"{match}/{N}"
  print("\n".join(table))
  if args.out:
    result["results_md"] = str(bm.write_results(
        args.out, "scripts/bench_decode.py", argv,
        f"Same random weights and prompt ({args.prompt_len} tokens), greedy, batch 1, one process, CPU. Each cell is "
        f"the median (min–max, IQR) of {args.repeats} interleaved repetitions after a warm-up; transformers runs "
        f"{'in its own process' if args.peer_process else 'in the same process, while JAX is idle'}, with "
        f"{timings.threads} torch threads (JAX's cores). Per-token decode = (t_{N} − t_1) / {N - 1} per repetition; "
        "ratios are the ratio of medians with the spread of the per-repetition ratios. A refused cell is a result "
        "that was impossible or inside the noise.\n\n" + timings.load_line(),
        table, result, extra=f"Greedy tokens matching: {match}/{N}."))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
