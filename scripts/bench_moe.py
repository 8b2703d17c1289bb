"""Benchmark: one MoE layer's expert paths — dense reference, ragged_dot, tiled — in one process.

  python scripts/bench_moe.py --config configs/target/small.py --tokens 128,512 [--out experiments/bench_moe]

Builds one learned-routing MoE layer of the config (fp32), routes random inputs with its own router, and times
the whole layer (router, routed experts, shared expert) jitted, forward and forward+backward (gradients of
params and input), for each path. The six functions are timed interleaved through `dsv4.benchmarking` (each
repetition runs every one in turn, so load on a shared machine hits all of them alike), after a warm-up that
compiles; each figure is the median (min–max, IQR) of --repeats. Prints a table and a final JSON line with
`tiled_speedup_vs_ragged` and `tiled_speedup_vs_dense` (time of the other path / tiled time, ratio of medians with
the per-repetition spread, or {refused: reason} inside the noise) per token count and pass, plus the largest
output difference of each path against dense.
"""

import argparse
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4 import benchmarking as bm
from dsv4.configs import load_config, model_config
from dsv4.kernels.tiled_moe import n_tiles, tile_layout, tile_size  # noqa: E402
from dsv4.model.moe import MoE

PATHS = ("dense", "ragged_dot", "tiled")
PASSES = ("fwd", "fwd_bwd")


def parse_tokens(text):
  try:
    tokens = tuple(int(v) for v in text.split(",") if v)
  except ValueError:
    tokens = ()
  if not tokens or min(tokens) < 1:
    raise argparse.ArgumentTypeError(f"--tokens wants positive integers separated by commas, got {text!r}")
  return tokens


def build_fns(moe):
  """{(path, pass): jitted fn(params, x)} over one layer; params are the layer's nnx.Param state."""
  graphdef, params, rest = nnx.split(moe, nnx.Param, ...)

  def fwd(impl):
    return lambda params, x: nnx.merge(graphdef, params, rest)(x, impl=impl)[0]

  def fwd_bwd(impl):
    def loss(params, x):
      return jnp.sum(jnp.square(nnx.merge(graphdef, params, rest)(x, impl=impl)[0]))
    return jax.grad(loss, argnums=(0, 1))

  fns = {}
  for impl in PATHS:
    fns[impl, "fwd"], fns[impl, "fwd_bwd"] = jax.jit(fwd(impl)), jax.jit(fwd_bwd(impl))
  return params, fns


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/target/small.py")
  p.add_argument("--tokens", type=parse_tokens, default=(128, 512), help="token counts per batch, e.g. 128,512")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--allow_load", action="store_true", help="record results even on a busy machine")
  p.add_argument("--out", default=None, help="folder to write results.md into")
  args = p.parse_args(argv)
  if args.repeats < bm.MIN_REPEATS:
    p.error(f"--repeats must be ≥ {bm.MIN_REPEATS} (a median with its spread)")

  cfg = model_config(load_config(args.config))
  moe = MoE(cfg, is_hash=False, rngs=nnx.Rngs(args.seed), dtype=jnp.float32, param_dtype=jnp.float32)
  params, fns = build_fns(moe)
  E, K, D = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.hidden_size
  rows, result = [], {"config": args.config, "backend": jax.default_backend(), "experts": E, "top_k": K,
                      "hidden": D, "moe_intermediate": cfg.moe_intermediate_size, "repeats": args.repeats,
                      "default_path": {}, "ms": {}, "tiled_speedup_vs_ragged": {}, "tiled_speedup_vs_dense": {},
                      "max_abs_diff_vs_dense": {}, "tiles": {}}
  loads = []
  for T in args.tokens:
    print(f"[bench_moe] {T} tokens: compiling and timing {len(fns)} functions ...", file=sys.stderr, flush=True)
    x = jax.random.normal(jax.random.key(args.seed + 1), (1, T, D), jnp.float32)
    timings = bm.time_interleaved({f"{i} {ps}": (lambda f=fn, x=x: f(params, x)) for (i, ps), fn in fns.items()},
                                  args.repeats, on_high_load=bm.load_mode(bool(args.out), args.allow_load))
    loads.append(f"{T} tokens: {timings.load_line()}")
    result.setdefault("load", {})[str(T)] = {k: v for k, v in timings.to_dict().items() if k.startswith("load")}
    ms = {key: 1e3 * timings.samples[f"{key[0]} {key[1]}"] for key in fns}
    ys = {impl: np.asarray(fns[impl, "fwd"](params, x)) for impl in PATHS}
    _, idx_TK, _ = moe.route(x.reshape(T, D))
    t = tile_size(T * K, E)
    used = int(tile_layout(idx_TK, E, t)[3])
    counts = np.bincount(np.asarray(idx_TK).reshape(-1), minlength=E)
    key = str(T)
    chosen = moe.expert_path("ragged", T * K)  # what moe_impl="ragged" runs here
    result["default_path"][key] = next(i for i in ("gather", *PATHS) if moe.expert_path(i, T * K) == chosen)
    result["ms"][key] = {f"{impl}_{ps}": bm.estimate(ms[impl, ps]).to_dict() for impl in PATHS for ps in PASSES}
    result["max_abs_diff_vs_dense"][key] = {impl: float(np.abs(ys[impl] - ys["dense"]).max()) for impl in PATHS[1:]}
    result["tiles"][key] = {"tile": t, "static_tiles": n_tiles(T * K, E, t), "used_tiles": used,
                            "max_load": int(counts.max()), "empty_experts": int((counts == 0).sum())}
    for other, name in (("ragged_dot", "tiled_speedup_vs_ragged"), ("dense", "tiled_speedup_vs_dense")):
      result[name][key] = {ps: bm.ratio_figure(ms[other, ps], ms["tiled", ps], f"{T} tokens {ps}: {other} / tiled")[1]
                           for ps in PASSES}
    for ps in PASSES:
      rows.append((str(T), ps.replace("_", "+"), *(bm.time_figure(ms[impl, ps], spec=".3g")[0] for impl in PATHS),
                   *(bm.ratio_figure(ms[other, ps], ms["tiled", ps], other)[0] for other in ("ragged_dot", "dense"))))
  table = bm.markdown_table(("tokens", "pass", "dense (ms)", "ragged_dot (ms)", "tiled (ms)", "tiled vs ragged_dot",
                             "tiled vs dense"), rows)
  print("\n".join(table) + "\n" + "\n".join(loads))
  if args.out:
    path = bm.write_results(
        args.out, "scripts/bench_moe.py", argv,
        f"One MoE layer of `{args.config}` ({E} experts, top-{K}, hidden {D}, expert intermediate "
        f"{cfg.moe_intermediate_size}, fp32), whole layer jitted (router, routed experts, shared expert); forward and "
        f"forward+backward (gradients of params and input). Each cell is the median (min–max, IQR) of {args.repeats} "
        f"repetitions after a warm-up, the six functions interleaved each repetition, one process, backend "
        f"`{jax.default_backend()}`. Ratios are the other path's time over tiled's: the ratio of medians with the "
        "spread of the per-repetition ratios; a refused cell was inside the noise.\n\n" + "\n".join(
            f"- {line}" for line in loads), table, result)
    result["results_md"] = str(path)
  print(json.dumps(result))


if __name__ == "__main__":
  bm.run_or_refuse(main)
