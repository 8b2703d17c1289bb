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

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from dsv4 import benchmarking as bm
from dsv4 import cli
from dsv4.configs import load_config, model_config
from dsv4.kernels.tiled_moe import n_tiles, tile_layout, tile_size  # noqa: E402
from dsv4.model.moe import MoE

PATHS = ("dense", "ragged_dot", "tiled")
PASSES = ("fwd", "fwd_bwd")



def _positive_ints(values) -> bool:
  try:
    return bool(values) and min(int(v) for v in values) >= 1
  except ValueError:
    return False


_CONFIG = flags.DEFINE_string("config", "configs/target/small.py", "target config whose MoE layer is timed")
_TOKENS = flags.DEFINE_list("tokens", ["128", "512"], "token counts per batch, comma-separated, e.g. 128,512")
flags.register_validator("tokens", _positive_ints, "--tokens wants positive integers separated by commas, e.g. 128,512")
_REPEATS, _ALLOW_LOAD, _OUT = cli.timing_flags(7, "timed repetitions of each function")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the layer's weights and inputs")


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


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; e.g. --tokens 128,512 (comma-separated, no spaces)")
  out = _OUT.value
  cfg = model_config(load_config(_CONFIG.value))
  moe = MoE(cfg, is_hash=False, rngs=nnx.Rngs(_SEED.value), dtype=jnp.float32, param_dtype=jnp.float32)
  params, fns = build_fns(moe)
  E, K, D = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.hidden_size
  rows, result = [], {"config": _CONFIG.value, "backend": jax.default_backend(), "experts": E, "top_k": K,
                      "hidden": D, "moe_intermediate": cfg.moe_intermediate_size, "repeats": _REPEATS.value,
                      "default_path": {}, "ms": {}, "tiled_speedup_vs_ragged": {}, "tiled_speedup_vs_dense": {},
                      "max_abs_diff_vs_dense": {}, "tiles": {}}
  loads = []
  for T in (int(t) for t in _TOKENS.value):
    print(f"[bench_moe] {T} tokens: compiling and timing {len(fns)} functions ...", file=sys.stderr, flush=True)
    x = jax.random.normal(jax.random.key(_SEED.value + 1), (1, T, D), jnp.float32)
    timings = bm.time_interleaved({f"{i} {ps}": (lambda f=fn, x=x: f(params, x)) for (i, ps), fn in fns.items()},
                                  _REPEATS.value, on_high_load=bm.load_mode(bool(out), _ALLOW_LOAD.value))
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
  if out:
    path = bm.write_results(
        out, "scripts/bench_moe.py", sys.argv[1:],
        f"One MoE layer of `{_CONFIG.value}` ({E} experts, top-{K}, hidden {D}, expert intermediate "
        f"{cfg.moe_intermediate_size}, fp32), whole layer jitted (router, routed experts, shared expert); forward and "
        f"forward+backward (gradients of params and input). Each cell is the median (min–max, IQR) of {_REPEATS.value} "
        f"repetitions after a warm-up, the six functions interleaved each repetition, one process, backend "
        f"`{jax.default_backend()}`. Ratios are the other path's time over tiled's: the ratio of medians with the "
        "spread of the per-repetition ratios; a refused cell was inside the noise.\n\n" + "\n".join(
            f"- {line}" for line in loads), table, result)
    result["results_md"] = str(path)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(lambda argv: bm.run_or_refuse(main, argv))
