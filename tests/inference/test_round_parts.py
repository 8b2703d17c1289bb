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
  timers = round_parts.round_part_timers(target, drafter, prompt, G, NEW, iters=2)
  assert set(timers) == {"ar_step", "draft", "verify"}
  np.testing.assert_array_equal(np.asarray(timers["draft"]()), np.asarray(timed))
