"""Validation pass of the tiny target at 1 process × 8 CPU devices against 2 processes × 4 (jax.distributed, gloo):
seconds per validation batch, for the pass as the pretraining loop runs it now (weights gathered once per pass, running
sums threaded through the eval step on the devices, fetched once) and as it ran before (weights sharded as training
holds them, a host round trip per batch), interleaved, plus the per-call seconds of the train step and of the eval
step either way and the collectives XLA put in the eval step.

  python experiments/multiprocess_validation/measure.py [--batches 8] [--reps 2] [--out DIR]

Writes OUT/results.md only when the 1-minute load average is below 1.5 at the start (timings on a busy machine
mislead); otherwise prints the table. Each layout runs in fresh processes (this file is also the worker).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def old_evaluate(eval_step, state, stream_factory, batch_shardings, max_batches: int) -> float:
  """The validation loop before the change: a host round trip (float) per batch."""
  from dsv4.training.pretrain import zero_sums
  from dsv4.training.pretrain_loop import _global_batch
  total = count = 0.0
  for i, local in enumerate(stream_factory()):
    if max_batches and i >= max_batches:
      break
    s, n = eval_step(state["params"], state["frozen"], _global_batch(local, batch_shardings), zero_sums())
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def worker(args) -> None:
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={8 // args.nproc} "
                             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  from dsv4.parallel import distributed
  distributed.initialize(f"127.0.0.1:{args.port}" if args.nproc > 1 else None, args.nproc, args.pid)
  import jax

  from dsv4.configs import load_config, model_config
  from dsv4.model.sharded import init_sharded
  from dsv4.parallel.config import mesh_from_config, rules_from_config
  from dsv4.training import data_setup, pretrain, pretrain_loop, train_state
  from dsv4.training.optimizer import learning_rate, make_optimizer

  cfg = load_config(str(ROOT / "configs/target/tiny.py"))
  cfg.data.corpus_dir = args.corpus
  model_cfg = model_config(cfg)
  mesh, rules = mesh_from_config(cfg), rules_from_config(cfg)
  splits = data_setup.load_splits(cfg.data, model_cfg, log=lambda _: None)
  optimizer = make_optimizer(cfg.train)
  model = init_sharded(model_cfg, mesh, rules, seed=0)
  shardings = train_state.state_sharding(model, optimizer, mesh, rules)
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  batch_sh = pretrain.batch_sharding(mesh, rules)
  fsdp_step = pretrain.make_eval_step(graphdef, cfg.train, shardings, batch_sh)
  gathered_step, place = pretrain.make_validation(graphdef, cfg.train, shardings, batch_sh, state)
  factory = lambda: data_setup.val_stream(splits, cfg.data, model_cfg, cfg.train.batch_size)  # noqa: E731

  def now(max_batches):  # as pretrain_loop runs it: weights placed once per pass, then the threaded sums
    params, frozen = place(state["params"], state["frozen"])
    pretrain_loop.evaluate(gathered_step, {"params": params, "frozen": frozen}, factory, batch_sh, max_batches)

  variants = {"before": lambda n: old_evaluate(fsdp_step, state, factory, batch_sh, n), "now": now}
  out = {"nproc": args.nproc, "val_batches": sum(1 for _ in factory()), "pass_s_per_batch": {k: [] for k in variants}}
  with jax.set_mesh(mesh):
    first = pretrain_loop._global_batch(next(iter(factory())), batch_sh)
    params, frozen = place(state["params"], state["frozen"])
    for name, step, args_ in (("fsdp", fsdp_step, (state["params"], state["frozen"])),
                              ("gathered", gathered_step, (params, frozen))):
      hlo = step.lower(*args_, first, pretrain.zero_sums()).compile().as_text()
      out[f"eval_collectives_{name}"] = dict(Counter(re.findall(
          r"= \S+ (all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\(", hlo)))
    for evaluate in variants.values():  # compile
      evaluate(1)
    for _ in range(args.reps):  # interleaved: before, now, before, now, ...
      for name, evaluate in variants.items():
        tick = time.perf_counter()
        evaluate(args.batches)
        out["pass_s_per_batch"][name].append((time.perf_counter() - tick) / args.batches)
    for name, step, args_ in (("fsdp", fsdp_step, (state["params"], state["frozen"])),
                              ("gathered", gathered_step, (params, frozen))):
      calls = []
      for _ in range(3):
        tick = time.perf_counter()
        jax.block_until_ready(step(*args_, first, pretrain.zero_sums()))
        calls.append(time.perf_counter() - tick)
      out[f"eval_call_s_{name}"] = sorted(calls)[1]
    step = pretrain.make_train_step(graphdef, optimizer, cfg.train, learning_rate(cfg.train), shardings, batch_sh)
    step = step.lower(state, first).compile()
    calls = []
    for _ in range(3):
      tick = time.perf_counter()
      state, metrics = step(state, first)
      float(metrics["loss"])
      calls.append(time.perf_counter() - tick)
    out["train_step_s"] = sorted(calls)[1]
  if jax.process_index() == 0:
    print("RESULT " + json.dumps(out), flush=True)


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def layout(nproc: int, corpus: str, batches: int, reps: int) -> dict:
  port = _port()
  cmd = [sys.executable, __file__, "--worker", "--nproc", str(nproc), "--port", str(port), "--corpus", corpus,
         "--batches", str(batches), "--reps", str(reps)]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  procs = [subprocess.Popen(cmd + ["--pid", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(nproc)]
  logs = [p.communicate(timeout=3600)[0] for p in procs]
  lines = [line for line in logs[0].splitlines() if line.startswith("RESULT ")]
  if not lines:
    sys.exit(f"layout {nproc} processes failed:\n{logs[0][-3000:]}")
  return json.loads(lines[0].removeprefix("RESULT "))


def median(xs):
  xs = sorted(xs)
  return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--batches", type=int, default=8, help="validation batches timed per pass")
  p.add_argument("--reps", type=int, default=2, help="passes of each variant (interleaved)")
  p.add_argument("--out", default=str(Path(__file__).parent))
  p.add_argument("--worker", action="store_true")
  p.add_argument("--nproc", type=int, default=1)
  p.add_argument("--pid", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--corpus")
  args = p.parse_args()
  if args.worker:
    return worker(args)
  load_before = os.getloadavg()[0]
  from dsv4.data.corpus import build_corpus
  corpus = str(Path(tempfile.mkdtemp()) / "stdlib_v512")
  build_corpus(corpus, vocab_size=512, max_files=40, log=lambda _: None)
  runs = {n: layout(n, corpus, args.batches, args.reps) for n in (1, 2)}
  load_after = os.getloadavg()[0]
  one, two = runs[1], runs[2]
  rows = ["| quantity | 1 × 8 | 2 × 4 | ratio |", "| --- | --- | --- | --- |"]
  for label, a, b in [
      *((f"validation pass, s per batch ({name}; min–max)", one["pass_s_per_batch"][name],
         two["pass_s_per_batch"][name]) for name in ("before", "now")),
      ("eval step call, weights sharded (FSDP), s", [one["eval_call_s_fsdp"]], [two["eval_call_s_fsdp"]]),
      ("eval step call, weights gathered, s", [one["eval_call_s_gathered"]], [two["eval_call_s_gathered"]]),
      ("train step call, s", [one["train_step_s"]], [two["train_step_s"]])]:
    spread = lambda xs: f"{median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})" if len(xs) > 1 else f"{xs[0]:.3f}"  # noqa: E731
    rows.append(f"| {label} | {spread(a)} | {spread(b)} | {median(b) / median(a):.1f}× |")
  intro = (f"Tiny target, batch 8 × 256, {args.batches} validation batches per pass, {args.reps} passes per variant "
           f"(interleaved); validation split: {one['val_batches']} batches at 1 × 8, {two['val_batches']} at 2 × 4 "
           f"(each process packs its own documents; the shorter side pads). Load average {load_before:.2f} before, "
           f"{load_after:.2f} after. Collectives per eval call at 2 × 4, weights sharded: "
           f"{two['eval_collectives_fsdp']}; "
           f"gathered: {two['eval_collectives_gathered']}. Before: weights sharded as training holds them (FSDP), a "
           "host round trip per batch. Now: weights gathered once per pass, sums threaded through the calls.")
  print(intro + "\n\n" + "\n".join(rows))
  if load_before < 1.5:  # the load at the end is mostly this script's own 8 device threads on 2 cores
    from dsv4.benchmarking import write_results
    path = write_results(args.out, "experiments/multiprocess_validation/measure.py", None, intro, rows, runs)
    print(f"wrote {path}")
  else:
    print(f"not writing results.md: load average {load_before:.2f} at the start (≥ 1.5)")


if __name__ == "__main__":
  main()
