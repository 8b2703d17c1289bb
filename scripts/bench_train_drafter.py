"""Benchmark: one drafter training step with online target features against the same step on cached features.

  python scripts/bench_train_drafter.py --config configs/drafter/dspark_small.py [--out experiments/bench_train_drafter]

Both steps train the same drafter from the same state on the same packed batch and anchors; the online step runs
the frozen target inside, the offline step reads its features (bf16, as the cache stores them). The two steps are
timed interleaved (online, offline, online, …) through `dsv4.benchmarking` after a compile warm-up, each mode
carrying its own training state, in one process; each figure is the median (min–max, IQR) of --repeats steps, and
the ratio is the ratio of medians with the spread of the per-repetition ratios (refused inside the noise). Memory is
XLA's own accounting of the compiled step (`memory_analysis()`: arguments + outputs + temporaries − aliased
donations), per device. Prints a table and a final JSON line with tokens/s of each mode and
`online_over_offline_time` ({median, min, max, q1, q3, n} or {refused: reason}).
"""

import json
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from absl import flags
from flax import nnx

from dsv4 import benchmarking as bm
from dsv4 import cli
from dsv4.configs import load_config
from dsv4.data.anchors import batch_anchors
from dsv4.drafters.build import build_drafter
from dsv4.io.target import load_target, tokenizer_path
from dsv4.training import data_setup, distill, feature_cache, train_state
from dsv4.training.distill_config import drafter_config
from dsv4.training.optimizer import learning_rate, make_optimizer

_CONFIG = flags.DEFINE_string("config", "configs/drafter/dspark_small.py", "drafter config[:scale] whose step is timed")
_REPEATS, _ALLOW_LOAD, _OUT = cli.timing_flags(5, "timed steps of each mode")


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
  out = _OUT.value
  config = load_config(_CONFIG.value)
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

  steps, results = {}, {}
  for mode in ("online", "offline"):
    loss_fn = distill.make_loss_fn(graphdef, dcfg, names, tgd, target.config, mode, t.moe_impl or None)
    step = distill.make_train_step(loss_fn, optimizer, schedule)
    inputs = {k: jnp.asarray(v) for k, v in {**batch, **(cached if mode == "offline" else {})}.items()}
    fresh = lambda: {"params": jax.tree.map(jnp.copy, params), "rest": rest, "opt": optimizer.init(params),
                     "step": jnp.zeros((), jnp.int32)}
    compiled = step.lower(fresh(), target_arrays, inputs).compile()
    box = {"state": fresh(), "sums": None}  # each mode trains its own state; the step donates it

    def run(compiled=compiled, inputs=inputs, box=box):
      box["state"], box["sums"] = compiled(box["state"], target_arrays, inputs)
      return box["sums"]
    steps[mode] = run
    results[mode] = {"peak_bytes": peak_bytes(compiled), "box": box}
  timings = bm.time_interleaved(steps, _REPEATS.value, on_high_load=bm.load_mode(bool(out), _ALLOW_LOAD.value))
  for r in results.values():
    sums = r.pop("box")["sums"]
    r["loss"] = float(sums["loss"] / sums["weight"])

  on, off = results["online"], results["offline"]
  s_on, s_off = timings.samples["online"], timings.samples["offline"]
  bpt = feature_cache.bytes_per_token(target.config.hidden_size, dcfg.num_taps, names, "bfloat16",
                                      target.config.hc_mult)
  step_cells = [bm.time_figure(x) for x in (s_on, s_off)]
  tps_cells = [bm.time_figure(tokens / x, spec=".4g") for x in (s_on, s_off)]
  time_ratio = bm.ratio_figure(s_on, s_off, "online / offline step time")
  tps_ratio = bm.ratio_figure(s_off, s_on, "online / offline tokens/s")
  table = bm.markdown_table(("measure", "online features", "offline cache (bf16)", "online / offline"), [
      ("step time (s)", step_cells[0][0], step_cells[1][0], time_ratio[0]),
      ("tokens/s", tps_cells[0][0], tps_cells[1][0], tps_ratio[0]),
      ("step memory (MiB, XLA)", f"{on['peak_bytes'] / 2**20:.1f}", f"{off['peak_bytes'] / 2**20:.1f}",
       f"{on['peak_bytes'] / off['peak_bytes']:.2f}×"),
      ("bytes read per token", f"{bpt['online']}", f"{bpt['offline']}", f"{bpt['online'] / bpt['offline']:.3f}×")])
  result = {"config": _CONFIG.value, "kind": dcfg.kind, "batch_size": t.batch_size, "seq_len": d.seq_len,
            "tokens_per_step": tokens, "blocks_per_step": int(batch["keep"].sum()), "block_size": dcfg.block_size,
            "repeats": _REPEATS.value, "devices": jax.device_count(),
            **{k: v for k, v in timings.to_dict().items() if k != "seconds"},
            "online_step_s": step_cells[0][1], "offline_step_s": step_cells[1][1],
            "online_tokens_per_s": tps_cells[0][1], "offline_tokens_per_s": tps_cells[1][1],
            "online_step_bytes": on["peak_bytes"], "offline_step_bytes": off["peak_bytes"],
            "online_over_offline_time": time_ratio[1], "bytes_per_token": bpt,
            "loss_after": {"online": on["loss"], "offline": off["loss"]}}
  print("\n".join(table) + "\n" + timings.load_line())
  if out:
    bm.write_results(out, "scripts/bench_train_drafter.py", sys.argv[1:],
                     f"One {dcfg.kind} training step (batch {t.batch_size} × {d.seq_len} tokens, "
                     f"{result['blocks_per_step']} blocks of {dcfg.block_size}) from the same state, batch and "
                     f"anchors; each cell is the median (min–max, IQR) of {_REPEATS.value} steps after warm-up, the "
                     "two "
                     "modes interleaved, one process, CPU; the ratio is the ratio of medians with the spread of the "
                     "per-repetition ratios, refused inside the noise.\n\n" + timings.load_line(), table, result)
  print(json.dumps(result))


if __name__ == "__main__":
  cli.run(lambda argv: bm.run_or_refuse(main, argv))
