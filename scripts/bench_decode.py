"""Benchmark: our jitted decode against transformers' greedy `generate` on the same weights and prompt, and the cost
of verifying n tokens in one `extend`.

  python scripts/bench_decode.py --config configs/target/small.py [--out experiments/bench_decode]
  python scripts/bench_decode.py --model smollm2-135m-instruct [--out experiments/bench_decode_smollm2]

The target is either random V4 weights built from `--config` (exported to a temporary transformers directory for
the peer), or a real model, `--model`: an installed model name, a .gguf file or a transformers directory, loaded
by dsv4 in float32 (`dsv4.io.target.load_target`) and by transformers' AutoModelForCausalLM in float32 from the
same file (a GGUF through transformers' own dequantisation). Before anything is timed, both sides decode N tokens
greedily from the prompt (no EOS stop on either side) and must agree token for token; otherwise the run is refused,
since the two sides would be timing different work.

Both sides generate greedily with max_new_tokens=1 (≈ prefill) and max_new_tokens=N. With --verify_ns (default
1,2,4,8,16 for --model, none for --config), dsv4's decode state holding a prompt prefix of --verify_prefix tokens
is extended by n tokens in one jitted `extend` (a speculative verification step), for each n. All variants are
timed interleaved (dsv4 1, dsv4 N, transformers 1, transformers N, extend n=1, n=2, …, repeated) after a warm-up
that compiles, through `dsv4.benchmarking`; torch gets as many threads as JAX's cores and runs while JAX is idle
(or, with --peer_process, in its own process). Per-token decode time is (t_N − t_1) / (N − 1) within each
repetition; a repetition where it is ≤ 0 makes the figure refused, not printed. Speedups are transformers / dsv4,
ratio of medians with the spread of the per-repetition ratios, refused when that spread includes 1; verification
costs are extend(n) / extend(1) with their spread (a cost, so ≈ 1 is a figure, not a refusal). Prints the tables
and a final JSON line with `decode_speedup_vs_transformers` (and the prefill and whole-generate ratios),
`verify_cost_vs_one` per n, as {median, min, max, q1, q3, n} or {refused: reason}, and `goals`.
"""

import functools
import json
import sys
import tempfile
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

import dsv4
from dsv4 import benchmarking as bm
from dsv4 import cli
from dsv4.configs import load_config, model_config
from dsv4.inference.generate import prefill
from dsv4.io.hf import save_pretrained

VERIFY_NS = (1, 2, 4, 8, 16)


def _ns_ok(values) -> bool:
  """--verify_ns: token counts ≥ 1 that include 1 (the baseline), or none at all."""
  try:
    ns = [int(v) for v in values or ()]
  except ValueError:
    return False
  return all(n >= 1 for n in ns) and (not ns or 1 in ns)


_CONFIG = flags.DEFINE_string("config", "configs/target/small.py", "random V4 target of this config (or --model)")
_MODEL = flags.DEFINE_string("model", None, "real target: installed model name, .gguf file or transformers dir")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 128, "prompt tokens")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "generated tokens N")
flags.register_validator("new_tokens", lambda n: n >= 2, "--new_tokens must be ≥ 2 (the per-token time is "
                         "(t_N − t_1) / (N − 1))")
_VERIFY_NS = flags.DEFINE_list("verify_ns", None, "tokens per verifying extend, comma-separated (default: "
                               "1,2,4,8,16 with --model, none with --config)")
flags.register_validator("verify_ns", _ns_ok, "token counts ≥ 1, including 1 (the baseline), e.g. 1,2,4,8,16")
_VERIFY_PREFIX = flags.DEFINE_integer("verify_prefix", None, "prompt prefix before the extend (default --prompt_len)")
_REPEATS, _ALLOW_LOAD, _OUT = cli.timing_flags(7, "timed repetitions of each variant")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the random weights and prompts")
_PEER_PROCESS = flags.DEFINE_bool("peer_process", False, "run transformers in its own process")


@functools.cache
def transformers_model(model_dir: str, gguf_file: str | None):
  """transformers' causal LM in float32 from a directory (or a GGUF file in it), loaded once per process, with no
  EOS: `generate` then makes exactly the tokens asked for, like `dsv4.generate(eos_id=None)`, instead of masking
  EOS's logit (min_new_tokens), which would change the greedy tokens."""
  import torch
  from transformers import AutoModelForCausalLM

  kw = {"gguf_file": gguf_file} if gguf_file else {}
  model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw).eval()
  model.generation_config.eos_token_id = None
  model.generation_config.pad_token_id = None
  return model


def transformers_generate(model_dir: str, prompt: list, n: int, gguf_file: str | None = None):
  """A no-argument greedy `generate` of n tokens by transformers (module level, so a `ProcessVariant` can build
  it in its own process)."""
  import torch

  model = transformers_model(model_dir, gguf_file)
  ids = torch.tensor([prompt])

  def run():
    with torch.no_grad():
      out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False)
    return out[0, len(prompt):].tolist()
  return run


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _verify(graphdef, params, state, tokens_BN):
  """One extend of all of tokens_BN from `state` (not donated, so every call starts from the same prefix)."""
  out, _ = nnx.merge(graphdef, params).extend(state, tokens_BN, jnp.full((tokens_BN.shape[0],), tokens_BN.shape[1]))
  return out.logits_BNV


def verify_variants(model, prefix: list, ns, seed: int) -> dict:
  """'extend n=…' → a no-argument call extending the decode state holding `prefix` by n tokens."""
  state, _ = prefill(model, [prefix], max_len=len(prefix) + max(ns))
  graphdef, params = nnx.split(model)
  tokens = np.random.default_rng(seed + 2).integers(2, model.config.vocab_size, (1, max(ns))).astype(np.int32)
  blocks = {n: jnp.asarray(tokens[:, :n]) for n in ns}
  return {f"extend n={n}": functools.partial(_verify, graphdef, params, state, blocks[n]) for n in ns}


def _load_model(args, tmp: str):
  """(dsv4 model, peer's model_dir, peer's gguf_file, what was loaded) for --config (random V4, exported to tmp)
  or --model (a real model, read by both sides from the same file)."""
  from dsv4.io.gguf_models import resolve
  from dsv4.io.target import load_target, read_target_config, target_format

  if args.model is None:
    cfg = model_config(load_config(args.config)).replace(num_nextn_predict_layers=0)
    ours = dsv4.Transformer(cfg, rngs=nnx.Rngs(args.seed))
    model_dir = str(Path(tmp) / "model")
    save_pretrained(ours, model_dir)
    return ours, model_dir, None, f"random weights from {args.config}"
  fmt = target_format(args.model)
  if fmt not in ("gguf", "transformers"):
    sys.exit(f"error: --model {args.model}: needs an installed model name (smollm2-135m-instruct), a .gguf file or a "
             "transformers directory (config.json + safetensors), which transformers can load too.")
  cfg, _ = read_target_config(args.model)
  need = max(args.prompt_len + args.new_tokens, args.verify_prefix + max(args.verify_ns, default=0))
  if need > cfg.max_position_embeddings:
    sys.exit(f"error: --model {args.model}: prompt and generated tokens ({need}) exceed its max_position_embeddings "
             f"({cfg.max_position_embeddings}); lower --prompt_len, --new_tokens or --verify_prefix.")
  ours = load_target(args.model, fmt)
  if fmt == "gguf":
    path = resolve(args.model)
    return ours, str(path.parent), path.name, f"{args.model} (float32, dequantised from {path.name})"
  return ours, str(Path(args.model).absolute()), None, f"{args.model} (float32)"


def _goal(figure: dict, holds) -> bool | None:
  return None if "refused" in figure else bool(holds(figure["median"]))


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; e.g. --verify_ns 1,2,4 (comma-separated, no spaces)")
  if flags.FLAGS["config"].present and _MODEL.value is not None:
    sys.exit("error: --config and --model are alternatives (random V4 weights or a real target); give one")
  verify_ns = VERIFY_NS if _VERIFY_NS.value is None and _MODEL.value else tuple(int(n) for n in _VERIFY_NS.value or ())
  args = types.SimpleNamespace(
      config=_CONFIG.value, model=_MODEL.value, prompt_len=_PROMPT_LEN.value, new_tokens=_NEW_TOKENS.value,
      verify_ns=verify_ns, verify_prefix=_PROMPT_LEN.value if _VERIFY_PREFIX.value is None else _VERIFY_PREFIX.value,
      repeats=_REPEATS.value, seed=_SEED.value, peer_process=_PEER_PROCESS.value, allow_load=_ALLOW_LOAD.value,
      out=_OUT.value)
  if args.verify_ns and args.verify_prefix < 1:
    sys.exit("error: --verify_prefix must be ≥ 1 (a decode state holds at least one prompt token)")

  N = args.new_tokens
  log = lambda m: print(f"[bench_decode] {m}", file=sys.stderr, flush=True)  # noqa: E731
  with tempfile.TemporaryDirectory() as tmp:
    ours, model_dir, gguf_file, what = _load_model(args, tmp)
    vocab = ours.config.vocab_size
    prompt = np.random.default_rng(args.seed).integers(2, vocab, args.prompt_len).tolist()
    variants = {f"dsv4 {n}": (lambda n=n: dsv4.generate(ours, [prompt], max_new_tokens=n)[0]) for n in (1, N)}
    peers = {}
    try:
      for n in (1, N):
        peers[f"transformers {n}"] = (bm.ProcessVariant(transformers_generate, (model_dir, prompt, n, gguf_file))
                                      if args.peer_process else transformers_generate(model_dir, prompt, n, gguf_file))
      with bm.torch_threads():
        log(f"greedy check: {N} tokens each side")
        match = bm.require_same_tokens(variants[f"dsv4 {N}"](), peers[f"transformers {N}"](),
                                       f"greedy decode of {N} tokens", ("dsv4", "transformers"))
        if args.verify_ns:
          prefix = np.random.default_rng(args.seed + 1).integers(2, vocab, args.verify_prefix).tolist()
          variants.update(verify_variants(ours, prefix, args.verify_ns, args.seed))
        timings = bm.time_interleaved({**variants, **peers}, args.repeats,
                                      on_high_load=bm.load_mode(bool(args.out), args.allow_load), log=log)
    finally:
      for peer in peers.values():
        if isinstance(peer, bm.ProcessVariant):
          peer.close()

  s = timings.samples
  per_token = {who: timings.difference(f"{who} {N}", f"{who} 1", 1e3 / (N - 1), f"{who} per-token decode time")
               for who in ("dsv4", "transformers")}
  rows, result = [], {"config": args.config if args.model is None else None, "model": args.model, "weights": what,
                      "prompt_len": args.prompt_len, "new_tokens": N, "repeats": args.repeats,
                      "peer": "process" if args.peer_process else "in-process", "greedy_tokens_matching": match,
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
  decode_ratio = bm.ratio_figure(per_token["transformers"], per_token["dsv4"], "per-token decode", effect=False)[1]
  goals = {"dsv4_ar_at_least_as_fast_as_transformers": _goal(decode_ratio, lambda r: r >= 1.0)}
  if args.verify_ns:
    vrows, costs, times = [], {}, {}
    for n in args.verify_ns:
      t = s[f"extend n={n}"]
      (ct, times[str(n)]), (cp, _) = bm.time_figure(t, 1e3), bm.time_figure(t, 1e3 / n)
      cr, costs[str(n)] = bm.ratio_figure(t, s["extend n=1"], f"extend n={n} / n=1", effect=False)
      vrows.append((str(n), ct, cp, cr))
    table += [""] + bm.markdown_table(("tokens per extend", "extend (ms)", "per token (ms)", "cost / one token"),
                                      vrows)
    result.update({"verify_prefix": args.verify_prefix, "ours_verify_ms": times, "verify_cost_vs_one": costs})
    if "8" in costs:
      goals["verify_8_at_most_2x_one"] = _goal(costs["8"], lambda r: r <= 2.0)
  result["goals"] = goals
  print("\n".join(table) + "\n" + timings.load_line())
  if args.out:
    verify = (f" Verification: dsv4's decode state holding a {args.verify_prefix}-token prefix, extended by n tokens "
              "in one jitted extend; cost = extend(n) / extend(1), ratio of medians with the per-repetition spread."
              if args.verify_ns else "")
    result["results_md"] = str(bm.write_results(
        args.out, "scripts/bench_decode.py", sys.argv[1:],
        f"Weights: {what}; the same weights and prompt ({args.prompt_len} tokens) on both sides, greedy, batch 1, "
        f"CPU. Each cell is the median (min–max, IQR) of {args.repeats} interleaved repetitions after a warm-up; "
        f"transformers runs {'in its own process' if args.peer_process else 'in the same process, while JAX is idle'}"
        f", with {timings.threads} torch threads (JAX's cores). Per-token decode = (t_{N} − t_1) / {N - 1} per "
        "repetition; speedups are the ratio of medians with the spread of the per-repetition ratios. A refused cell "
        f"is a result that was impossible or inside the noise.{verify}\n\n" + timings.load_line(),
        table, result, extra=f"Greedy tokens matching: {match}. Goals: {json.dumps(goals)}."))
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(lambda argv: bm.run_or_refuse(main, argv))
