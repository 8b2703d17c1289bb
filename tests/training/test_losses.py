"""LM losses on packed rows against a naive per-position loop: padding and cross-document pairs are excluded,
MTP module k predicts token t + 2 + k; the expert-bias update against its rule."""

import math

import jax.numpy as jnp
import numpy as np

from dsv4.model.transformer import TargetOutput
from dsv4.training import expert_balance
from dsv4.training.losses import lm_losses


def _naive_ce(logits_TV, tokens_T, segments_T, offset):
  total = count = 0.0
  for t in range(len(tokens_T) - offset):
    if segments_T[t] != 0 and segments_T[t + offset] == segments_T[t]:
      row = logits_TV[t].astype(np.float64)
      total += math.log(np.exp(row - row.max()).sum()) + row.max() - row[tokens_T[t + offset]]
      count += 1
  return total, count


def test_lm_losses_equal_a_naive_loop_over_same_document_pairs():
  rng = np.random.default_rng(0)
  B, T, V = 2, 11, 7
  tokens = rng.integers(0, V, (B, T)).astype(np.int32)
  segments = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0, 3, 3], [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
  logits = rng.normal(size=(B, T, V)).astype(np.float32)
  mtp = rng.normal(size=(1, B, T, V)).astype(np.float32)
  out = TargetOutput(logits_BTV=jnp.asarray(logits), final_hidden_BTD=None, mtp_logits_KBTV=jnp.asarray(mtp))
  got = lm_losses(out, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(segments != 0, jnp.int32))
  for field, lg, offset in (("ce", logits, 1), ("mtp", mtp[0], 2)):
    s = n = 0.0
    for b in range(B):
      ds, dn = _naive_ce(lg[b], tokens[b], segments[b], offset)
      s, n = s + ds, n + dn
    np.testing.assert_allclose(float(got[field]), s / n, rtol=1e-6)
  assert float(got["tokens"]) == 3 + 2 + 1 + 8  # pairs inside documents 1, 2, 3 of row 0 and document 1 of row 1


def test_padding_tokens_do_not_change_the_loss():
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, 9, (1, 8)).astype(np.int32)
  segments = np.array([[1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
  logits = jnp.asarray(rng.normal(size=(1, 8, 9)), jnp.float32)
  other = tokens.copy()
  other[0, 5:] = (other[0, 5:] + 1) % 9
  run = lambda t: float(lm_losses(TargetOutput(logits, None), jnp.asarray(t), jnp.asarray(segments),
                                  jnp.asarray(segments != 0, jnp.int32))["ce"])
  assert run(tokens) == run(other)
  changed = tokens.copy()
  changed[0, 4] = (changed[0, 4] + 1) % 9  # a real target: the loss must move
  assert run(changed) != run(tokens)


def test_expert_bias_moves_towards_balance():
  experts = jnp.asarray([[[0, 1], [0, 1], [0, 2], [0, 3]]], jnp.int32)  # expert 0 overloaded, 4..5 idle
  weights = jnp.asarray([[1.0, 1.0, 1.0, 0.0]])  # the last position is padding
  load = expert_balance.expert_load(experts, weights, 6)
  np.testing.assert_array_equal(np.asarray(load), [3, 2, 1, 0, 0, 0])
  bias = expert_balance.update_bias(jnp.zeros(6), load, 0.01)
  np.testing.assert_allclose(np.asarray(bias), [-0.01, -0.01, 0.0, 0.01, 0.01, 0.01])  # mean load is 1
  np.testing.assert_allclose(float(expert_balance.load_entropy(jnp.ones(6))), 1.0, rtol=1e-6)
  assert float(expert_balance.load_entropy(jnp.asarray([5.0, 0, 0, 0, 0, 0]))) == 0.0
