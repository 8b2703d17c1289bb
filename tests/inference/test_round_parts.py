"""The timed parts of a round do the round's work: the draft part is the drafter's propose followed by its commit of
a verify's outputs (so loop efficiency is left with acceptance, rollback and the loop's bookkeeping), checked
against the same steps written out by hand for every drafter kind on the tiny target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.inference import round_parts
from dsv4.inference.draft_state import adapter_for
from dsv4.inference.generate import pad_prompts
from dsv4.inference.speculative import _unwrap, max_len_for, prompt_width
from tests.inference.spec_fixtures import prompts_of, tiny_drafter, tiny_target

G, NEW = 3, 8


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dspark", "eagle3", "mtp"])
def test_the_draft_part_is_propose_then_commit(kind):
  target, drafter = tiny_target(), tiny_drafter(kind)
  prompt = prompts_of((9,), target.config.vocab_size, seed=3)[0]
  module, _, frozen = _unwrap(target, drafter)
  adapter = adapter_for(module, G)
  width = prompt_width(target.config, [prompt], NEW, G)
  padded, lengths = pad_prompts([prompt], width)
  tg, tp = nnx.split(target)
  dg, dp = nnx.split(module)
  tstate, dstate, first_B = round_parts._start(tg, tp, dg, dp, frozen, jnp.asarray(padded), jnp.asarray(lengths),
                                               adapter=adapter, max_len=max_len_for([width], NEW, G))
  pos_B = tstate.lengths_B
  fed_BN = jnp.broadcast_to(first_B[:, None], (1, G + 1)).astype(jnp.int32)
  out = round_parts._verify_once(tg, tp, tstate, fed_BN, taps=adapter.tap_layers)

  @jax.jit
  def by_hand(dp, dstate):  # two iterations of the timed draft, step by step
    d = nnx.merge(dg, dp)
    key = jax.random.key(0)
    p1 = adapter.propose(d, frozen, dstate, first_B, pos_B, jax.random.fold_in(key, 0), 0.0, 0, 1.0)
    fed = jnp.concatenate([first_B[:, None], p1.tokens_BG], axis=1)
    emitted = jnp.concatenate([p1.tokens_BG, first_B[:, None]], axis=1)
    dstate = adapter.commit(d, frozen, dstate, out, fed, emitted, pos_B, jnp.zeros_like(pos_B))
    anchor_B = p1.tokens_BG[:, -1]
    p2 = adapter.propose(d, frozen, dstate, anchor_B, pos_B, jax.random.fold_in(key, 1), 0.0, 0, 1.0)
    return p2.tokens_BG[:, -1]

  timed = round_parts._drafts(dg, dp, frozen, dstate, out, first_B, pos_B, adapter=adapter, iters=2,
                              temperature=0.0, top_k=0, top_p=1.0)
  np.testing.assert_array_equal(np.asarray(timed), np.asarray(by_hand(dp, dstate)))
  # and the timers the evaluation uses run
  timers = round_parts.round_part_timers(target, drafter, prompt, G, NEW, iters=(2, 3))
  assert set(timers) == {f"{part}/{n}" for part in round_parts.PARTS for n in (2, 3)}
  np.testing.assert_array_equal(np.asarray(timers["draft/2"]()), np.asarray(timed))


def _timings(samples):
  from dsv4.benchmarking import Timings
  return Timings(samples={k: np.asarray(v, np.float64) for k, v in samples.items()}, order=list(samples),
                 load_start=(0.0, 0.0, 0.0), load_end=(0.0, 0.0, 0.0), threads=2, warmup=1)


def test_per_iteration_cancels_each_calls_own_cost():
  # calls that take dispatch + n · step, the dispatch varying per repetition: the per-call division is biased by
  # dispatch / n, the difference is not
  rng = np.random.default_rng(0)
  step = {"ar_step": 1.2e-3, "draft": 1.6e-3, "verify": 3.5e-3}
  dispatch = 2.5e-3 + rng.uniform(0, 1e-4, 7)
  samples = {f"d@7/{part}/{n}": dispatch + n * t + rng.uniform(0, 1e-5, 7) for part, t in step.items()
             for n in (8, 32)}
  got = round_parts.per_iteration(_timings(samples), "d@7", 8, 32)
  for part, t in step.items():
    assert abs(got[part].value - t) < 2e-5, (part, got[part].value, t)
    assert samples[f"d@7/{part}/8"].mean() / 8 > t + 2.5e-4  # what the division by 8 would have reported


def test_per_iteration_refuses_a_difference_inside_the_noise():
  from dsv4.benchmarking import Refused
  samples = {f"d@7/{part}/{n}": [0.02, 0.03, 0.02, 0.02, 0.02] if n == 8 else [0.025] * 5 for part in
             round_parts.PARTS for n in (8, 32)}
  got = round_parts.per_iteration(_timings(samples), "d@7", 8, 32)
  assert all(isinstance(v, Refused) for v in got.values())
