"""Cached decode equals the full forward: token by token, multi-token, per-row lengths, and after rollbacks.

Property-tested with hypothesis over prompt lengths, chunk sizes, per-row valid counts and speculative-style
rollbacks (extend with partly wrong tokens, roll back to the last right one, continue). Sequences run past
the sliding window (8), many CSA windows (4) and two HCA windows (128).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsv4.model import Transformer
from dsv4.model.decode import extend, init_state, rollback
from dsv4.model.transformer import jit_forward
from tests.model.test_transformer import CFG

B, T, PREFILL = 3, 290, 48
CHUNKS = (1, 4, 9)


@pytest.fixture(scope="module")
def setup():
  model = Transformer(CFG, rngs=nnx.Rngs(0))
  ids = np.random.default_rng(0).integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
  full = np.asarray(jit_forward(model)(jnp.asarray(ids)).logits_BTV)
  graphdef, params = nnx.split(model)
  step = jax.jit(lambda state, toks, nv: extend(nnx.merge(graphdef, params), state, toks, nv))
  return ids, full, step


def tokens_at(ids, starts, n, rng=None, wrong_from=None):
  """ids[b, starts[b]:starts[b]+n] per row (zero-padded); from offset wrong_from[b] on, random wrong tokens."""
  out = np.zeros((B, n), np.int32)
  for b in range(B):
    seg = ids[b, starts[b]:starts[b] + n]
    out[b, :len(seg)] = seg
    if wrong_from is not None:
      for j in range(wrong_from[b], n):
        out[b, j] = (out[b, j] + 1 + rng.integers(CFG.vocab_size - 1)) % CFG.vocab_size
  return out


def check(full, logits, starts, n_valid):
  scale = np.abs(full).max()
  for b in range(B):
    want = full[b, starts[b]:starts[b] + n_valid[b]]
    got = logits[b, :n_valid[b]]
    assert np.abs(got - want).max(initial=0) <= 1e-4 * scale, (b, starts[b], n_valid[b])


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_extend_and_rollback_match_full_forward(setup, data):
  ids, full, step = setup
  rng = np.random.default_rng(data.draw(st.integers(0, 2**31 - 1)))
  state = init_state(CFG, B, T)
  lens = np.array(data.draw(st.lists(st.integers(1, PREFILL), min_size=B, max_size=B)), np.int32)
  out, state = step(state, tokens_at(ids, np.zeros(B, int), PREFILL), lens)
  check(full, np.asarray(out.logits_BNV), np.zeros(B, int), lens)
  while lens.min() < T - max(CHUNKS):
    n = data.draw(st.sampled_from(CHUNKS))
    room = np.minimum(n, T - lens)
    if data.draw(st.booleans()):  # speculative round: some right tokens, then wrong ones, then roll back
      keep = np.array([rng.integers(0, r + 1) for r in room])
      out, state = step(state, tokens_at(ids, lens, n, rng, wrong_from=keep), room)
      check(full, np.asarray(out.logits_BNV), lens, keep)  # slots before the first wrong token
      state = rollback(state, lens + keep)
      lens = lens + keep
    else:
      nv = np.array([rng.integers(0, r + 1) for r in room])
      out, state = step(state, tokens_at(ids, lens, n), nv)
      check(full, np.asarray(out.logits_BNV), lens, nv)
      lens = lens + nv
    np.testing.assert_array_equal(np.asarray(state.lengths_B), lens)
  assert lens.min() > 256  # crossed two HCA windows


def test_rollback_then_extend_equals_fresh_prefill(setup):
  """After extend-by-n and rollback to L, the next logits equal a fresh prefill of the first L (+1) tokens."""
  ids, full, step = setup
  state = init_state(CFG, B, T)
  _, state = step(state, tokens_at(ids, np.zeros(B, int), 140), np.full(B, 140))
  rolled = rollback(state, np.array([3, 129, 131]))
  starts = np.asarray(rolled.lengths_B)
  out, _ = step(rolled, tokens_at(ids, starts, 1), np.ones(B, np.int32))
  fresh = init_state(CFG, B, T)
  fresh_out, _ = step(fresh, tokens_at(ids, np.zeros(B, int), 140), starts + 1)
  for b in range(B):
    np.testing.assert_allclose(np.asarray(out.logits_BNV)[b, 0], np.asarray(fresh_out.logits_BNV)[b, starts[b]],
                               rtol=0, atol=1e-4 * np.abs(full).max())
