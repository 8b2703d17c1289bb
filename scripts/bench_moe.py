"""Benchmark: one MoE layer's expert paths — dense reference, ragged_dot, tiled — in one process.

  python scripts/bench_moe.py --config configs/target/small.py --tokens 128,512 [--out experiments/bench_moe]

Builds one learned-routing MoE layer of the config (fp32), routes random inputs with its own router, and times
the whole layer (router, routed experts, shared expert) jitted, forward and forward+backward (gradients of
params and input), for each path. Each repetition runs every path once in turn, so load on a shared machine
hits all of them alike; the figure is the median of --repeats after a warm-up. Prints a table and a final JSON
line with `tiled_speedup_vs_ragged` and `tiled_speedup_vs_dense` (time of the other path / tiled time) per
token count and pass, plus the largest output difference of each path against dense.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dsv4.benchmarking import write_results  # noqa: E402
from dsv4.configs import load_config, model_config  # noqa: E402
from dsv4.model.moe import MoE, n_tiles, tile_layout, tile_size  # noqa: E402

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


def time_round_robin(fns, args, repeats):
  """Median seconds per fn; every repetition runs each fn once (after one warm-up call each, which compiles)."""
  for fn in fns.values():
    jax.block_until_ready(fn(*args))
  times = {key: [] for key in fns}
  for _ in range(repeats):
    for key, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times[key].append(time.perf_counter() - t0)
  return {key: statistics.median(ts) for key, ts in times.items()}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/target/small.py")
  p.add_argument("--tokens", type=parse_tokens, default=(128, 512), help="token counts per batch, e.g. 128,512")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="folder to write results.md into")
  args = p.parse_args(argv)
  if args.repeats < 5:
    p.error("--repeats must be ≥ 5 (the metric is a median of ≥ 5 runs)")

  cfg = model_config(load_config(args.config))
  moe = MoE(cfg, is_hash=False, rngs=nnx.Rngs(args.seed), dtype=jnp.float32, param_dtype=jnp.float32)
  params, fns = build_fns(moe)
  E, K, D = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.hidden_size
  rows, result = [], {"config": args.config, "backend": jax.default_backend(), "experts": E, "top_k": K,
                      "hidden": D, "moe_intermediate": cfg.moe_intermediate_size, "repeats": args.repeats,
                      "default_path": {}, "ms": {}, "tiled_speedup_vs_ragged": {}, "tiled_speedup_vs_dense": {},
                      "max_abs_diff_vs_dense": {}, "tiles": {}}
  for T in args.tokens:
    print(f"[bench_moe] {T} tokens: compiling and timing {len(fns)} functions ...", file=sys.stderr, flush=True)
    x = jax.random.normal(jax.random.key(args.seed + 1), (1, T, D), jnp.float32)
    secs = time_round_robin(fns, (params, x), args.repeats)
    ys = {impl: np.asarray(fns[impl, "fwd"](params, x)) for impl in PATHS}
    _, idx_TK, _ = moe.route(x.reshape(T, D))
    t = tile_size(T * K, E)
    used = int(tile_layout(idx_TK, E, t)[3])
    loads = np.bincount(np.asarray(idx_TK).reshape(-1), minlength=E)
    key = str(T)
    chosen = moe.expert_path("ragged", T * K)  # what moe_impl="ragged" runs here
    result["default_path"][key] = next(i for i in ("gather", *PATHS) if moe.expert_path(i, T * K) == chosen)
    result["ms"][key] = {f"{impl}_{ps}": round(1e3 * secs[impl, ps], 3) for impl in PATHS for ps in PASSES}
    result["tiled_speedup_vs_ragged"][key] = {ps: round(secs["ragged_dot", ps] / secs["tiled", ps], 3) for ps in PASSES}
    result["tiled_speedup_vs_dense"][key] = {ps: round(secs["dense", ps] / secs["tiled", ps], 3) for ps in PASSES}
    result["max_abs_diff_vs_dense"][key] = {impl: float(np.abs(ys[impl] - ys["dense"]).max()) for impl in PATHS[1:]}
    result["tiles"][key] = {"tile": t, "static_tiles": n_tiles(T * K, E, t), "used_tiles": used,
                            "max_load": int(loads.max()), "empty_experts": int((loads == 0).sum())}
    for ps in PASSES:
      d, r, tl = (1e3 * secs[impl, ps] for impl in PATHS)
      rows.append(f"| {T} | {ps.replace('_', '+')} | {d:.2f} | {r:.2f} | {tl:.2f} | {r / tl:.2f}× | {d / tl:.2f}× |")
  table = ["| tokens | pass | dense (ms) | ragged_dot (ms) | tiled (ms) | tiled vs ragged_dot | tiled vs dense |",
           "| --- | --- | --- | --- | --- | --- | --- |"] + rows
  print("\n".join(table))
  if args.out:
    path = write_results(
        args.out, "scripts/bench_moe.py", argv,
        f"One MoE layer of `{args.config}` ({E} experts, top-{K}, hidden {D}, expert intermediate "
        f"{cfg.moe_intermediate_size}, fp32), whole layer jitted (router, routed experts, shared expert); forward and "
        f"forward+backward (gradients of params and input). Median of {args.repeats} after warm-up, the paths taken "
        f"in turn each repetition, one process, backend `{jax.default_backend()}`. Ratios are the other path's time "
        "over tiled's.", table, result)
    result["results_md"] = str(path)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
