"""The drafter's state as the speculative loop keeps it — started from the prefill, then extended round by round at
the verified rows with rejected drafts left behind — equals the state built from scratch over the committed
sequence: the next proposal is the same. Checked per drafter kind on the tiny target with a fixed schedule of
accepted counts that differs between the two rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters.context import FrozenTarget
from dsv4.inference.draft_state import adapter_for
from dsv4.inference.generate import pad_prompts
from dsv4.model.decode import rollback
from tests.inference.spec_fixtures import prompts_of, tiny_drafter, tiny_target

V = 512
PROMPTS = prompts_of((6, 11), V, seed=5)
SCHEDULE = ((2, 0), (0, 3), (3, 1), (1, 2))     # accepted drafts per round, per row (γ = 3 verified)
G, S = 3, 64


def run(kind, fn, *args):
  target, drafter = tiny_target(), tiny_drafter(kind)
  tg, tp = nnx.split(target)
  dg, dp = nnx.split(drafter)
  adapter = adapter_for(drafter, G)
  jitted = jax.jit(lambda tp, dp, *a: fn(nnx.merge(tg, tp), nnx.merge(dg, dp), adapter, *a))
  return jitted(tp, dp, *args)


def incremental(target, drafter, adapter, prompt_BP, plen_B, cont_BC):
  frozen, taps = FrozenTarget.of(target), adapter.tap_layers
  pre, ts = target.extend(target.init_state(2, S), prompt_BP, plen_B, taps)
  ds = adapter.init(drafter, frozen, pre, prompt_BP, plen_B, cont_BC[:, 0], S)
  c_B = jnp.zeros((2,), jnp.int32)   # index in cont of the anchor
  for a in SCHEDULE:
    a_B = jnp.asarray(a, jnp.int32)
    pos_B = ts.lengths_B
    true_BN = jnp.take_along_axis(cont_BC, c_B[:, None] + jnp.arange(G + 2), axis=1)  # anchor, then what follows
    j = jnp.arange(1, G + 1)[None, :]
    drafts = jnp.where(j <= a_B[:, None], true_BN[:, 1:G + 1], (true_BN[:, 1:G + 1] + 1) % V)  # wrong after a
    fed = jnp.concatenate([true_BN[:, :1], drafts], axis=1)
    out, ts = target.extend(ts, fed, None, taps)
    ds = adapter.commit(drafter, frozen, ds, out, fed, true_BN[:, 1:], pos_B, a_B)
    ts = rollback(ts, pos_B + a_B + 1)
    c_B = c_B + a_B + 1
  anchor_B = jnp.take_along_axis(cont_BC, c_B[:, None], axis=1)[:, 0]
  return adapter.propose(drafter, frozen, ds, anchor_B, ts.lengths_B, None, 0.0, 0, 1.0)


def from_scratch(target, drafter, adapter, prompt_BP, plen_B, anchor_B):
  frozen = FrozenTarget.of(target)
  pre, _ = target.extend(target.init_state(2, S), prompt_BP, plen_B, adapter.tap_layers)
  ds = adapter.init(drafter, frozen, pre, prompt_BP, plen_B, anchor_B, S)
  return adapter.propose(drafter, frozen, ds, anchor_B, plen_B, None, 0.0, 0, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dspark", "eagle3", "mtpk"])
def test_extended_state_equals_rebuilt(kind):
  cont = np.random.default_rng(1).integers(1, V, (2, 24)).astype(np.int32)
  padded, lengths = pad_prompts(PROMPTS)
  got = run(kind, incremental, jnp.asarray(padded), jnp.asarray(lengths), jnp.asarray(cont))
  used = np.sum(np.asarray(SCHEDULE) + 1, axis=0)            # committed continuation tokens before the anchor
  committed = [p + cont[b, :used[b]].tolist() for b, p in enumerate(PROMPTS)]
  padded, lengths = pad_prompts(committed)
  want = run(kind, from_scratch, jnp.asarray(padded), jnp.asarray(lengths), jnp.asarray(cont[[0, 1], used]))
  w = np.asarray(want.logits_BGV)
  np.testing.assert_allclose(np.asarray(got.logits_BGV), w, rtol=0, atol=1e-4 * np.abs(w).max())
  np.testing.assert_array_equal(np.asarray(got.tokens_BG), np.asarray(want.tokens_BG))

