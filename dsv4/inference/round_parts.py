"""The parts of a speculative round, each jitted on its own, for timing: T_AR-step, T_draft and T_verify.

Loop efficiency (DESIGN.md) compares the measured speedup with what the parts predict, τ · T_AR-step /
(T_draft + T_verify), so the parts are timed apart from the loop, on the same target, drafter, prompt and γ:
  ar_step  one `extend` of one token plus the next token's sampling: what `dsv4.generate` runs per token;
  draft    the drafter's work of a round: its `propose` of γ drafts from its state, then its `commit`, which
           extends that state from the target's outputs at the verified rows (context K/V of the new taps,
           EAGLE-3's and MTP's caches): drafter compute the loop pays every round;
  verify   one `extend` of [anchor, d_1..d_γ] with the drafter's taps: the target's half of a round.
What is left of a round, acceptance, emitting, rollback and the while loop's own bookkeeping, is what loop
efficiency measures.
Each runs n times inside one jit (`lax.fori_loop`, as in the loop), and every iteration consumes the previous
one's output (the next token, anchor or block) so nothing is loop-invariant and XLA cannot hoist the work out of
the loop; the caches are rolled back to the prompt after each step.

A part's time is a difference, (T(n_long) − T(n_short)) / (n_long − n_short) per repetition (`per_iteration`), not
a timed call / n: each call also pays its own dispatch (flattening the models' hundreds of arrays into the jit)
and setup, ~2.5 ms on `small`, once. Divided by 8 iterations that made a 0.9–1.1 ms AR step read 1.3–1.8 ms,
and the prediction it feeds too high (experiments/loop_overhead). The decodes pay that cost once per call as
well, AR and speculative alike, which the wall-clock speedup keeps.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.benchmarking import Estimate, Refused, Timings, estimate
from dsv4.inference.draft_state import adapter_for
from dsv4.model.decode import rollback
from dsv4.sampling import row_keys, sample

PARTS = ("ar_step", "draft", "verify")


@functools.partial(jax.jit, static_argnames=("tgraph", "dgraph", "adapter", "max_len"))
def _start(tgraph, tparams, dgraph, dparams, frozen, prompt_BP, len_B, *, adapter, max_len):
  target, drafter = nnx.merge(tgraph, tparams), nnx.merge(dgraph, dparams)
  pre, tstate = target.extend(target.init_state(prompt_BP.shape[0], max_len), prompt_BP, len_B, adapter.tap_layers)
  last_BV = jnp.take_along_axis(pre.logits_BNV, (len_B - 1)[:, None, None], axis=1)[:, 0]
  first_B = jnp.argmax(last_BV, axis=-1).astype(jnp.int32)
  dstate = adapter.init(drafter, frozen, pre, prompt_BP, len_B, first_B, max_len)
  return tstate, dstate, first_B


@functools.partial(jax.jit, static_argnames=("tgraph", "iters", "temperature", "top_k", "top_p"))
def _ar_steps(tgraph, tparams, tstate, tok_B, *, iters, temperature, top_k, top_p):
  target = nnx.merge(tgraph, tparams)
  len_B = tstate.lengths_B

  def body(i, carry):
    state, tok_B = carry
    out, state = target.extend(state, tok_B[:, None], jnp.ones_like(tok_B))
    tok_B = sample(out.logits_BNV[:, 0], row_keys(jnp.uint32(0), i, tok_B.shape[0]), temperature, top_k, top_p)
    return rollback(state, len_B), tok_B

  return jax.lax.fori_loop(0, iters, body, (tstate, tok_B))[1]


@functools.partial(jax.jit, static_argnames=("tgraph", "iters", "taps"))
def _verifies(tgraph, tparams, tstate, fed_BN, *, iters, taps):
  target = nnx.merge(tgraph, tparams)
  len_B = tstate.lengths_B
  n_B = jnp.full((fed_BN.shape[0],), fed_BN.shape[1], jnp.int32)

  def body(i, carry):
    state, fed_BN = carry
    out, state = target.extend(state, fed_BN, n_B, taps)
    return rollback(state, len_B), jnp.argmax(out.logits_BNV, axis=-1).astype(jnp.int32)

  return jax.lax.fori_loop(0, iters, body, (tstate, fed_BN))[1]


def _depends_on(out, tokens_BG):
  """`out` with its taps and streams made to depend on this iteration's drafts (adding a zero XLA cannot prove is
  zero), so that the commit's drafter compute on them is not hoisted out of the timing loop as loop-invariant."""
  zero_B = (tokens_BG[:, 0] < 0).astype(jnp.float32)  # token ids are ≥ 0

  def touch(x):
    return None if x is None else x + zero_B.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  return dataclasses.replace(out, taps_BNLD=touch(out.taps_BNLD), streams_BNHD=touch(out.streams_BNHD))


@functools.partial(jax.jit, static_argnames=("dgraph", "adapter", "iters", "temperature", "top_k", "top_p"))
def _drafts(dgraph, dparams, frozen, dstate, out, anchor_B, pos_B, *, adapter, iters, temperature, top_k, top_p):
  drafter = nnx.merge(dgraph, dparams)
  key = jax.random.key(0)
  a_B = jnp.zeros_like(pos_B)  # one accepted row or γ: the commit writes all γ + 1 verified rows either way

  def body(i, carry):
    dstate, anchor_B = carry
    prop = adapter.propose(drafter, frozen, dstate, anchor_B, pos_B, jax.random.fold_in(key, i), temperature,
                           top_k, top_p)
    fed_BN = jnp.concatenate([anchor_B[:, None], prop.tokens_BG], axis=1)
    emitted_BN = jnp.concatenate([prop.tokens_BG, anchor_B[:, None]], axis=1)
    dstate = adapter.commit(drafter, frozen, dstate, _depends_on(out, prop.tokens_BG), fed_BN, emitted_BN, pos_B,
                            a_B)
    return dstate, prop.tokens_BG[:, -1]

  return jax.lax.fori_loop(0, iters, body, (dstate, anchor_B))[1]


@functools.partial(jax.jit, static_argnames=("tgraph", "taps"))
def _verify_once(tgraph, tparams, tstate, fed_BN, *, taps):
  """One verify's target outputs, which the draft timer's commits read (a round's commit reads its verify's)."""
  target = nnx.merge(tgraph, tparams)
  n_B = jnp.full((fed_BN.shape[0],), fed_BN.shape[1], jnp.int32)
  return target.extend(tstate, fed_BN, n_B, taps)[0]


def round_part_timers(target, drafter, prompt: list[int], gamma: int, max_new_tokens: int, *,
                      temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, iters: tuple[int, ...] = (8, 32),
                      prompt_bucket: int = 1) -> dict:
  """{f"{part}/{n}"} for each part of `PARTS` and n in `iters`: no-argument callables each running its part n
  times (`per_iteration` turns two counts' timings into seconds per iteration). `drafter` as
  `dsv4.speculative_generate` takes it; `prompt` one prompt's token ids. The caches have the sizes the decoders
  give them for `max_new_tokens` (attention reads the whole buffer, masked)."""
  from dsv4.inference.generate import pad_prompts, padded_width, prefill
  from dsv4.inference.speculative import _unwrap, max_len_for, prompt_width
  module, cfg, frozen = _unwrap(target, drafter)
  adapter = adapter_for(module, gamma)
  tgraph, tparams = nnx.split(target)
  dgraph, dparams = nnx.split(module)
  width = prompt_width(target.config, [prompt], max_new_tokens, gamma, prompt_bucket)
  padded, lengths = pad_prompts([prompt], width)  # the decoders' buffer (speculative_generate's prompt_bucket)
  tstate, dstate, first_B = _start(tgraph, tparams, dgraph, dparams, frozen, jnp.asarray(padded),
                                   jnp.asarray(lengths), adapter=adapter,
                                   max_len=max_len_for([width], max_new_tokens, gamma))
  ar_width = padded_width([len(prompt)], prompt_bucket, target.config.max_position_embeddings - max_new_tokens)
  ar_state, _ = prefill(target, [prompt], ar_width + max_new_tokens, ar_width)  # dsv4.generate's cache size
  fed_BN = jnp.broadcast_to(first_B[:, None], (1, gamma + 1)).astype(jnp.int32)
  sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
  verified = _verify_once(tgraph, tparams, tstate, fed_BN, taps=adapter.tap_layers)
  timers = {}
  for n in iters:
    timers |= {
        f"ar_step/{n}": functools.partial(_ar_steps, tgraph, tparams, ar_state, first_B, iters=n, **sampling),
        f"draft/{n}": functools.partial(_drafts, dgraph, dparams, frozen, dstate, verified, first_B,
                                        tstate.lengths_B, adapter=adapter, iters=n, **sampling),
        f"verify/{n}": functools.partial(_verifies, tgraph, tparams, tstate, fed_BN, iters=n,
                                         taps=adapter.tap_layers),
    }
  return timers


def per_iteration(timings: Timings, prefix: str, short: int, long: int,
                  parts: tuple[str, ...] = PARTS) -> dict[str, Estimate | Refused]:
  """Seconds per iteration of each of `parts` from the timers `prefix + "/" + round_part_timers key` run at
  `short` and `long` iterations: (T_long − T_short) / (long − short) per repetition, its median and spread;
  Refused where a repetition's difference is ≤ 0 (inside the noise)."""
  out = {}
  for part in parts:
    d = timings.difference(f"{prefix}/{part}/{long}", f"{prefix}/{part}/{short}", 1.0 / (long - short))
    out[part] = d if isinstance(d, Refused) else estimate(d, f"{prefix} {part} per iteration")
  return out
