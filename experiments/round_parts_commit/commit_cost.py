"""The draft part with and without the drafter's commit, interleaved, on the small target (a calm machine):
  PYTHONPATH=. python experiments/round_parts_commit/commit_cost.py
Not yet recorded on a calm machine: run it, and commit its output beside it."""
import functools

import jax
import jax.numpy as jnp
from flax import nnx

import dsv4
from dsv4.benchmarking import time_interleaved
from dsv4.inference import round_parts
from dsv4.io.target import load_target


@functools.partial(jax.jit, static_argnames=("dgraph", "adapter", "iters"))
def propose_only(dgraph, dparams, frozen, dstate, anchor_B, pos_B, *, adapter, iters):
  drafter = nnx.merge(dgraph, dparams)
  key = jax.random.key(0)
  def body(i, anchor_B):
    prop = adapter.propose(drafter, frozen, dstate, anchor_B, pos_B, jax.random.fold_in(key, i), 0.0, 0, 1.0)
    return prop.tokens_BG[:, -1]
  return jax.lax.fori_loop(0, iters, body, anchor_B)

target = load_target("assets/targets/small")
variants = {}
for name, path, g in [("dspark", "assets/drafters/small-dspark", 7), ("eagle3", "runs/eagle3-small", 7),
                      ("mtp_k", "runs/mtp-small", 7)]:
  d = dsv4.load_drafter(path, target=target)
  prompt = list(range(3, 131))
  t = round_parts.round_part_timers(target, d, prompt, g, 64, iters=8, prompt_bucket=32)
  variants[f"{name} propose+commit"] = t["draft"]
  # the same state and anchor as the timer's closure
  from dsv4.inference.draft_state import adapter_for
  from dsv4.inference.generate import pad_prompts
  from dsv4.inference.speculative import _unwrap, max_len_for, prompt_width
  module, cfg, frozen = _unwrap(target, d)
  adapter = adapter_for(module, g)
  tg, tp = nnx.split(target)
  dg, dp = nnx.split(module)
  width = prompt_width(target.config, [prompt], 64, g, 32)
  padded, lengths = pad_prompts([prompt], width)
  ts, ds, first = round_parts._start(tg, tp, dg, dp, frozen, jnp.asarray(padded), jnp.asarray(lengths), adapter=adapter,
                                     max_len=max_len_for([width], 64, g))
  variants[f"{name} propose"] = (lambda dg=dg, dp=dp, frozen=frozen, ds=ds, first=first, ts=ts, adapter=adapter:
                                 propose_only(dg, dp, frozen, ds, first, ts.lengths_B, adapter=adapter, iters=8))
  variants[f"{name} verify"] = t["verify"]
res = time_interleaved(variants, 7, warmup=1, on_high_load="warn")
print(res.load_line())
for k in variants:
  e = res.estimate(k)
  print(f"{k:28s} {e.value / 8 * 1e3:.3f} ms  ({e.to_dict()})")
