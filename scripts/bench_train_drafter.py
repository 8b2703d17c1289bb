"""Benchmark: one drafter training step with online target features against the same step on cached features.

  python scripts/bench_train_drafter.py --config configs/drafter/dspark_small.py [--out experiments/bench_train_drafter]

Both steps train the same drafter from the same state on the same packed batch and anchors; the online step runs
the frozen target inside, the offline step reads its features (bf16, as the cache stores them). Each is timed
after a compile warm-up, median of --repeats steps, in one process. Memory is XLA's own accounting of the compiled
step (`memory_analysis()`: arguments + outputs + temporaries − aliased donations), per device. Prints a table and a
final JSON line with tokens/s of each mode and `online_over_offline_time`.
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
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from dsv4.benchmarking import write_results  # noqa: E402
from dsv4.configs import load_config  # noqa: E402
from dsv4.data.anchors import batch_anchors  # noqa: E402
from dsv4.drafters.build import build_drafter  # noqa: E402
from dsv4.training import data_setup, distill, feature_cache, train_state  # noqa: E402
from dsv4.training.distill_config import drafter_config  # noqa: E402
from dsv4.training.optimizer import learning_rate, make_optimizer  # noqa: E402
from dsv4.training.target_source import load_target, tokenizer_path  # noqa: E402


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="configs/drafter/dspark_small.py")
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--out", default=None, help="folder to write results.md into")
  args = p.parse_args(argv)
  if args.repeats < 3:
    p.error("--repeats must be ≥ 3 (the metric is a median of ≥ 3 steps)")

  config = load_config(args.config)
  dcfg, t, d = drafter_config(config), config.train, config.data
  target = load_target(config.target.path)
  if not d.tokenizer and tokenizer_path(config.target.path):
    d.tokenizer = str(tokenizer_path(config.target.path))
  splits = data_setup.load_splits(d, target.config, log=lambda _: None)
  rows = next(data_setup.train_stream(splits, d, target.config, t.batch_size))
  batch = {**rows, **{k: v for k, v in batch_anchors(rows, d.num_anchors, d.max_blocks, t.seed, 0).items()
                      if k != "dropped"}}
  tokens = int(np.count_nonzero(rows["segment_ids"]))

  tgd, tparams, tfrozen = train_state.split_model(target)
  target_arrays = {"params": tparams, "frozen": tfrozen}
  drafter = build_drafter(dcfg, target.config, seed=t.seed, target=target)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  names = tuple(drafter.feature_names)
  optimizer, schedule = make_optimizer(t), learning_rate(t)
  feats = jax.jit(lambda tg, b: distill.feature_arrays(tgd, tg, b, dcfg.target_layer_ids, names))(
      target_arrays, {k: jnp.asarray(rows[k]) for k in distill.ROW_FIELDS})
  cached = {k: np.asarray(v).astype(ml_dtypes.bfloat16) for k, v in feats.items()}

  results = {}
  for mode in ("online", "offline"):
    loss_fn = distill.make_loss_fn(graphdef, dcfg, names, tgd, target.config, mode, t.moe_impl or None)
    step = distill.make_train_step(loss_fn, optimizer, schedule)
    inputs = {k: jnp.asarray(v) for k, v in {**batch, **(cached if mode == "offline" else {})}.items()}
    fresh = lambda: {"params": jax.tree.map(jnp.copy, params), "rest": rest, "opt": optimizer.init(params),
                     "step": jnp.zeros((), jnp.int32)}
    compiled = step.lower(fresh(), target_arrays, inputs).compile()
    state = fresh()
    state, sums = compiled(state, target_arrays, inputs)  # warm-up
    times = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      state, sums = compiled(state, target_arrays, inputs)
      jax.block_until_ready(sums)
      times.append(time.perf_counter() - t0)
    results[mode] = {"step_s": statistics.median(times), "peak_bytes": peak_bytes(compiled),
                     "loss": float(sums["loss"] / sums["weight"])}

  on, off = results["online"], results["offline"]
  bpt = feature_cache.bytes_per_token(target.config.hidden_size, dcfg.num_taps, names, "bfloat16",
                                      target.config.hc_mult)
  table = ["| measure | online features | offline cache (bf16) | online / offline |", "| --- | --- | --- | --- |",
           f"| step time (s) | {on['step_s']:.3f} | {off['step_s']:.3f} | {on['step_s'] / off['step_s']:.2f}× |",
           f"| tokens/s | {tokens / on['step_s']:.0f} | {tokens / off['step_s']:.0f} | "
           f"{off['step_s'] / on['step_s']:.2f}× |",
           f"| step memory (MiB, XLA) | {on['peak_bytes'] / 2**20:.1f} | {off['peak_bytes'] / 2**20:.1f} | "
           f"{on['peak_bytes'] / off['peak_bytes']:.2f}× |",
           f"| bytes read per token | {bpt['online']} | {bpt['offline']} | {bpt['online'] / bpt['offline']:.3f}× |"]
  result = {"config": args.config, "kind": dcfg.kind, "batch_size": t.batch_size, "seq_len": d.seq_len,
            "tokens_per_step": tokens, "blocks_per_step": int(batch["keep"].sum()), "block_size": dcfg.block_size,
            "repeats": args.repeats, "devices": jax.device_count(),
            "online_tokens_per_s": round(tokens / on["step_s"], 1),
            "offline_tokens_per_s": round(tokens / off["step_s"], 1),
            "online_step_bytes": on["peak_bytes"], "offline_step_bytes": off["peak_bytes"],
            "online_over_offline_time": round(on["step_s"] / off["step_s"], 3),
            "bytes_per_token": bpt}
  print("\n".join(table))
  if args.out:
    write_results(args.out, "scripts/bench_train_drafter.py", argv,
                  f"One {dcfg.kind} training step (batch {t.batch_size} × {d.seq_len} tokens, "
                  f"{result['blocks_per_step']} blocks of {dcfg.block_size}) from the same state, batch and anchors; "
                  f"median of {args.repeats} steps after warm-up, one process, CPU.", table, result)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
