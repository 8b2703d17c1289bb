"""Compile the drafter training step for a large mesh of fake CPU devices and print XLA's per-device memory next
to the planner's estimate (`dsv4.planning.plan`); nothing is allocated.

  python scripts/aot_drafter_step.py --config configs/drafter/dspark.py:v4_flash \
      --target configs/target/v4_flash.py:bf16 --target_layers 5 --mesh expert=16,fsdp=4 --batch 64 --seq 4096 \
      [--out experiments/aot_drafter_step]

The target is the named config cut to --target_layers layers (the published widths, experts and vocabulary; the
drafter's tapped layers are respread evenly over the cut depth), so a 64-device program compiles in minutes on
a CPU. The step is `train_drafter.py`'s own (online target features, AdamW, donation) with the config's rules.
Compiles once per --moe_impls value (train.moe_impl of both the target's and the drafter's MoE layers). Prints a
table, then one JSON line.
"""

import json
import math
import os
import sys
import time

from absl import flags

from dsv4 import cli

_CONFIG = flags.DEFINE_string("config", "configs/drafter/dspark.py:v4_flash", "drafter config[:scale]")
_TARGET = flags.DEFINE_string("target", "configs/target/v4_flash.py:bf16", "target model config[:variant]")
_TARGET_LAYERS = flags.DEFINE_integer("target_layers", 5, "cut the target to this many layers (0: keep all)")
_MESH = flags.DEFINE_string("mesh", "expert=16,fsdp=4", "axis sizes; their product is the fake device count")
_BATCH = flags.DEFINE_integer("batch", 64, "global batch (sequences)")
_SEQ = flags.DEFINE_integer("seq", 4096, "sequence length")
_MOE_IMPLS = flags.DEFINE_list("moe_impls", ["ragged", "expert_parallel"], "train.moe_impl values to compile, "
                               "comma-separated (ragged: GSPMD partitions the dropless path; expert_parallel: tokens "
                               "sent to the devices holding their experts)")
_FP32 = flags.DEFINE_bool("fp32", False, "the drafter in float32 too (use with an fp32 target config): XLA:CPU "
                          "computes bf16 matmuls in float32, so an all-fp32 step compares the planner with XLA "
                          "without that CPU conversion")
_DEVICE = flags.DEFINE_string("device", "h200", "accelerator the plan is checked against")
_OUT = flags.DEFINE_string("out", None, "folder to write results.md into")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; every option is a --flag (see --help)")
  from dsv4.parallel.mesh import parse_sizes  # no JAX backend yet: the device count must be set first
  try:
    sizes = parse_sizes(_MESH.value)
  except ValueError as e:
    sys.exit(f"error: {e}")
  n_devices = math.prod(v for k, v in sizes.items() if not k.startswith("dcn_"))
  if any(v < 1 for v in sizes.values()):
    sys.exit("error: --mesh: give every size explicitly (no -1) — it sets the fake device count")
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n_devices}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

  import jax

  from dsv4.benchmarking import write_results
  from dsv4.configs import load_config, model_config
  from dsv4.parallel.mesh import make_mesh
  from dsv4.parallel.rules import rules_from_config
  from dsv4.planning import plan as plan_lib
  from dsv4.planning.distill_aot import lower_train_step, memory
  from dsv4.training.distill_config import drafter_config

  if jax.device_count() != n_devices:
    sys.exit(f"error: JAX started with {jax.device_count()} devices, the mesh needs {n_devices}; run this script "
             "in a fresh process (XLA_FLAGS is set before JAX starts).")
  config, tconfig = load_config(_CONFIG.value), load_config(_TARGET.value)
  target_cfg = model_config(tconfig, where=f"{_TARGET.value}: model")
  dcfg = drafter_config(config)
  if _TARGET_LAYERS.value:
    target_cfg, taps = cut_target(target_cfg, _TARGET_LAYERS.value, dcfg.num_taps)
    dcfg = dcfg.replace(target_layer_ids=taps)
  if _FP32.value:
    dcfg = dcfg.replace(dtype="float32", param_dtype="float32")
  rules = rules_from_config(config)
  mesh = make_mesh(sizes)
  max_blocks = int(config.data.max_blocks)
  runs = []
  for impl in _MOE_IMPLS.value:
    train = config.train.copy_and_resolve_references()
    train.moe_impl = impl
    t0 = time.perf_counter()
    compiled = lower_train_step(dcfg, target_cfg, train, mesh, rules, batch=_BATCH.value, seq=_SEQ.value,
                                max_blocks=max_blocks).compile()
    compile_s = time.perf_counter() - t0
    planned = plan_lib.plan(target_cfg, mesh, rules, job="train_drafter", device=_DEVICE.value, batch=_BATCH.value,
                            seq=_SEQ.value, taps=dcfg.num_taps, drafter=(dcfg, train, max_blocks))
    runs.append({"moe_impl": impl, "compile_s": round(compile_s, 1), "xla": memory(compiled),
                 "plan": {k: v for k, v in planned.items() if "bytes" in k or k == "fits"}})
    print(f"moe_impl {impl}: compiled in {compile_s:.0f} s", flush=True)

  gb = lambda n: f"{n / 1e9:.2f}"
  table = ["| moe_impl | planner: state + batch | XLA: arguments | planner: activations | XLA: temporaries | "
           "planner: peak | XLA: peak | XLA / planner (peak) | fits " + _DEVICE.value + " (planner) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in runs:
    p, x = r["plan"], r["xla"]
    state = p["params_bytes"] + p["drafter_params_bytes"] + p["optimizer_bytes"] + p["batch_bytes"]
    r["peak_xla_over_plan"] = round(x["peak_bytes"] / p["bytes_per_device"], 3)
    table.append(f"| {r['moe_impl']} | {gb(state)} | {gb(x['argument_bytes'])} | {gb(p['activation_bytes'])} | "
                 f"{gb(x['temp_bytes'])} | {gb(p['bytes_per_device'])} | {gb(x['peak_bytes'])} | "
                 f"{r['peak_xla_over_plan']:.2f} | {'yes' if p['fits'] else 'no'} |")
  result = {"config": _CONFIG.value, "target": _TARGET.value, "target_layers": target_cfg.num_hidden_layers,
            "target_layer_ids": list(dcfg.target_layer_ids), "mesh": sizes, "n_devices": n_devices,
            "batch": _BATCH.value, "seq": _SEQ.value, "max_blocks": max_blocks, "block_size": dcfg.block_size,
            "drafter_dtype": dcfg.param_dtype,
            "vocab_size": target_cfg.vocab_size, "runs": runs}
  if len(runs) > 1:
    result["peak_first_over_last"] = round(runs[0]["xla"]["peak_bytes"] / runs[-1]["xla"]["peak_bytes"], 3)
  print(f"{dcfg.kind} drafter ({dcfg.param_dtype}) on a {target_cfg.num_hidden_layers}-layer cut of {_TARGET.value}, "
        f"mesh {_MESH.value} "
        f"({n_devices} fake CPU devices), batch {_BATCH.value} × {_SEQ.value}, {max_blocks} blocks of "
        f"{dcfg.block_size} per row; GB per device")
  print("\n".join(table))
  if _OUT.value:
    write_results(_OUT.value, "scripts/aot_drafter_step.py", sys.argv[1:],
                  f"The {dcfg.kind} drafter training step (online target features, AdamW, donated state) compiled "
                  f"ahead of time for {n_devices} fake CPU devices, once per expert path; XLA's memory_analysis "
                  "per device next to dsv4.planning.plan's figures through the same rules. Peak = arguments + "
                  "outputs + temporaries − outputs aliased onto donated arguments. XLA:CPU's buffer assignment, "
                  "not a GPU's: XLA:CPU computes bf16 matmuls in float32, so gathered bf16 weights and their "
                  "gradients appear as float32 copies; the planner's target parameters include the MTP module, "
                  "which the step does not read (XLA drops unused arguments).", table, result)
  print(json.dumps(result))


def cut_target(cfg, n_layers: int, n_taps: int):
  """`cfg` with its first n_layers layers (compress ratios and hash layers cut to match) and n_taps tapped layers
  spread evenly over them (the last one tapped)."""
  import dataclasses
  if not n_taps <= n_layers <= cfg.num_hidden_layers:
    sys.exit(f"error: --target_layers {n_layers} must be between the drafter's {n_taps} taps and the target's "
             f"{cfg.num_hidden_layers} layers.")
  cut = dataclasses.replace(cfg, num_hidden_layers=n_layers, compress_ratios=tuple(cfg.compress_ratios[:n_layers]),
                            num_hash_layers=min(cfg.num_hash_layers, n_layers))
  taps = tuple(round((i + 1) * n_layers / n_taps) - 1 for i in range(n_taps))
  return cut, taps


if __name__ == "__main__":
  cli.run(main)
