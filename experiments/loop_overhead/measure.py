"""What the speculative loop costs beyond its parts, per round, with every call's own cost cancelled.

For each drafter of `configs/eval/small.py:all` at its trained γ, on one held-out code prompt of the `small`
target at T = 0, interleaved in one timing call:
  round    the jitted loop (`_speculate`, no EOS, a fixed cache) generating 64 and 16 tokens: (T_64 − T_16) /
           (rounds_64 − rounds_16), the prefill, the dispatch and the host transfer cancel;
  AR token the same for dsv4's AR loop: (T_64 − T_16) / 48;
  parts    `dsv4.inference.round_parts` at 32 and 8 iterations, per iteration by difference (what the evaluation
           uses), and, for comparison, the 8-iteration call / 8 (what it used before);
  one body the drafter's propose and commit and the target's verify in one `fori_loop` body, at a fixed position
           and without acceptance or bookkeeping: the two parts as a round runs them, nothing else;
  2 verifies  two verifies in one body, against twice the verify part: the same effect without a second model.
"round / parts" is what the loop adds to drafting + verifying, split into "one body / parts" (the parts run in
one loop body) and "round / one body" (acceptance, emitting, rollback and the while loop's bookkeeping);
"AR token / step" is the same comparison for AR.

  python experiments/loop_overhead/measure.py [--drafters dspark,eagle3,mtp_k,mtp_1] [--repeats 9] [--out DIR]

Writes OUT/results.md only when the 1-minute load average is below 1.5 at the start; otherwise prints the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHORT, LONG = 16, 64
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from dsv4.model.decode import rollback  # noqa: E402


def drafter_timers(target, drafter, prompt, eos_free: int):
  """{name: callable} for the loop and AR at SHORT and LONG new tokens, and the round's parts; rounds per length."""
  from dsv4.inference import speculative as spec
  from dsv4.inference.acceptance import lossless_accept
  from dsv4.inference.draft_state import adapter_for
  from dsv4.inference.generate import _generate, pad_prompts
  from dsv4.inference.round_parts import _start, round_part_timers

  module, cfg, frozen = spec._unwrap(target, drafter)
  gamma = cfg.block_size
  adapter = adapter_for(module, gamma)
  tg, tp = nnx.split(target)
  dg, dp = nnx.split(module)
  width = spec.prompt_width(target.config, [prompt], LONG, gamma, 32)
  padded, lengths = (jnp.asarray(x) for x in pad_prompts([prompt], width))
  max_len = spec.max_len_for([width], LONG, gamma)  # one cache size for both lengths: only the rounds differ
  sampling = dict(temperature=0.0, top_k=0, top_p=1.0)

  def loop(n):
    return spec._speculate(tg, tp, dg, dp, frozen, padded, lengths, jnp.uint32(0), jnp.int32(eos_free),
                           adapter=adapter, accept=lossless_accept, gamma=gamma, max_new_tokens=n, max_len=max_len,
                           **sampling)

  def ar(n):
    return _generate(tg, tp, padded, lengths, jnp.uint32(0), jnp.int32(eos_free), max_new_tokens=n,
                     max_len=max_len, **sampling)

  tstate, dstate, first_B = _start(tg, tp, dg, dp, frozen, padded, lengths, adapter=adapter, max_len=max_len)
  fed_BN = jnp.broadcast_to(first_B[:, None], (1, gamma + 1)).astype(jnp.int32)
  rounds = {n: int(loop(n)[3]) for n in (SHORT, LONG)}
  timers = {f"loop/{n}": functools.partial(loop, n) for n in (SHORT, LONG)}
  timers |= {f"ar/{n}": functools.partial(ar, n) for n in (SHORT, LONG)}
  timers |= round_part_timers(target, drafter, prompt, gamma, LONG, iters=(8, 32), prompt_bucket=32)
  for n in (8, 32):
    timers[f"one_body/{n}"] = functools.partial(_one_body, tg, tp, dg, dp, frozen, tstate, dstate, first_B,
                                                adapter=adapter, iters=n)
    timers[f"two_verifies/{n}"] = functools.partial(_two_verifies, tg, tp, tstate, fed_BN, taps=adapter.tap_layers,
                                                    iters=n)
  return gamma, rounds, timers


@functools.partial(jax.jit, static_argnames=("tg", "dg", "adapter", "iters"))
def _one_body(tg, tp, dg, dp, frozen, tstate, dstate, anchor_B, *, adapter, iters):
  """propose, verify, commit per iteration, each on the previous one's output; caches rolled back to the prompt."""
  target, drafter = nnx.merge(tg, tp), nnx.merge(dg, dp)
  len_B, n_B = tstate.lengths_B, jnp.full_like(tstate.lengths_B, adapter.steps + 1)

  def body(i, carry):
    tstate, dstate, anchor_B = carry
    prop = adapter.propose(drafter, frozen, dstate, anchor_B, len_B, jax.random.key(0), 0.0, 0, 1.0)
    fed_BN = jnp.concatenate([anchor_B[:, None], prop.tokens_BG], axis=1)
    out, tstate = target.extend(tstate, fed_BN, n_B, adapter.tap_layers)
    emitted_BN = jnp.concatenate([prop.tokens_BG, anchor_B[:, None]], axis=1)
    dstate = adapter.commit(drafter, frozen, dstate, out, fed_BN, emitted_BN, len_B, jnp.zeros_like(len_B))
    return rollback(tstate, len_B), dstate, jnp.argmax(out.logits_BNV[:, -1], axis=-1).astype(jnp.int32)

  return jax.lax.fori_loop(0, iters, body, (tstate, dstate, anchor_B))[2]


@functools.partial(jax.jit, static_argnames=("tg", "taps", "iters"))
def _two_verifies(tg, tp, tstate, fed_BN, *, taps, iters):
  """round_parts' verify, twice per iteration, the second on the first's argmax."""
  target = nnx.merge(tg, tp)
  len_B, n_B = tstate.lengths_B, jnp.full_like(tstate.lengths_B, fed_BN.shape[1])

  def body(i, carry):
    tstate, fed_BN = carry
    for _ in range(2):
      out, tstate = target.extend(tstate, fed_BN, n_B, taps)
      tstate, fed_BN = rollback(tstate, len_B), jnp.argmax(out.logits_BNV, axis=-1).astype(jnp.int32)
    return tstate, fed_BN

  return jax.lax.fori_loop(0, iters, body, (tstate, fed_BN))[1]


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--drafters", default="dspark,eagle3,mtp_k,mtp_1")
  ap.add_argument("--repeats", type=int, default=9)
  ap.add_argument("--prompt", type=int, default=0, help="index of the held-out code prompt")
  ap.add_argument("--out", default=str(ROOT / "experiments/loop_overhead"))
  args = ap.parse_args(argv)

  import dsv4
  from dsv4.benchmarking import Refused, markdown_table, ratio_figure, time_figure, time_interleaved, write_results
  from dsv4.configs import load_config
  from dsv4.evaluation import harness
  from dsv4.io.target import load_target

  load_start = os.getloadavg()[0]
  config = load_config(str(ROOT / "configs/eval/small.py") + ":all")
  target = load_target(config.target)
  prompts = harness.load_sets(config, harness.load_tokenizer_for(config.target), target.config.bos_token_id)[0].prompts
  prompt = prompts[args.prompt]
  paths = dict(config.drafters)
  rows, result, loads = [], {}, []
  for name in args.drafters.split(","):
    gamma, rounds, timers = drafter_timers(target, dsv4.load_drafter(paths[name], target), prompt, -1)
    t = time_interleaved(timers, args.repeats, warmup=1, on_high_load="warn", settle_s=90.0)
    loads.append(f"{name}: {t.load_line()}")
    per = {"round": t.difference(f"loop/{LONG}", f"loop/{SHORT}", 1.0 / (rounds[LONG] - rounds[SHORT])),
           "ar_token": t.difference(f"ar/{LONG}", f"ar/{SHORT}", 1.0 / (LONG - SHORT))}
    per |= {part: t.difference(f"{part}/32", f"{part}/8", 1.0 / 24) for part in (
        "ar_step", "draft", "verify", "one_body", "two_verifies")}
    refused = [per[k] for k in ("draft", "verify") if isinstance(per[k], Refused)]
    parts = refused[0] if refused else per["draft"] + per["verify"]
    cells = {k: time_figure(v, 1e3, ".3g") for k, v in per.items()}
    cells["round_over_parts"] = ratio_figure(per["round"], parts, "round / (draft + verify)", effect=False)
    cells["one_body_over_parts"] = ratio_figure(per["one_body"], parts, "one body / parts", effect=False)
    cells["round_over_one_body"] = ratio_figure(per["round"], per["one_body"], "round / one body", effect=False)
    cells["two_verifies_over_verify"] = ratio_figure(
        per["two_verifies"], per["verify"] if isinstance(per["verify"], Refused) else 2 * per["verify"],
        "two verifies in one body / twice the verify part", effect=False)
    cells["ar_token_over_step"] = ratio_figure(per["ar_token"], per["ar_step"], "AR token / AR step", effect=False)
    cells["ar_step_per_call"] = time_figure(t._get("ar_step/8"), 1e3 / 8, ".3g")
    rows.append([name, str(gamma), f"{rounds[SHORT]} / {rounds[LONG]}"] + [cells[k][0] for k in (
        "round", "draft", "verify", "round_over_parts", "one_body_over_parts", "round_over_one_body",
        "two_verifies_over_verify", "ar_token", "ar_step", "ar_token_over_step", "ar_step_per_call")])
    result[name] = {"gamma": gamma, "rounds": rounds} | {k: v[1] for k, v in cells.items()}
    print(" | ".join(rows[-1]), flush=True)
  table = markdown_table(["drafter", "γ", f"rounds {SHORT} / {LONG}", "round ms", "draft ms", "verify ms",
                          "round / (draft + verify)", "one body / parts", "round / one body",
                          "2 verifies / 2 × verify", "AR token ms", "AR step ms", "AR token / step",
                          "AR step ms as call / 8"], rows)
  print("\n".join(table))
  print(json.dumps(result))
  if load_start < 1.5:
    intro = (__doc__.split("\n\n")[1] + "\n\nTimes are medians (min–max, IQR) over the repetitions, in ms; ratios "
             "are ratios of medians with the per-pair spread.\n\n" + "\n".join(f"- {x}" for x in loads))
    print(write_results(args.out, "experiments/loop_overhead/measure.py", argv, intro, table, result))
  else:
    print(f"load {load_start:.2f} ≥ 1.5 at the start: not recorded", file=sys.stderr)


if __name__ == "__main__":
  main()
