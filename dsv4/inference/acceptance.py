"""Lossless acceptance of a drafted block: which drafts the target keeps, and the one token it adds.

A round verifies [anchor, d_1 … d_γ] in one target extend, giving γ+1 target distributions: p_k (k = 1..γ+1)
predicts the token after the anchor and the first k−1 drafts. The drafter sampled d_k from q_k. Both p and q
are the *processed* distributions, softmax(filter_logits(logits, T, top_k, top_p)) — the same processing
`dsv4.generate` samples from — so the target distribution being preserved is exactly AR sampling's.

  T = 0   a = the longest prefix with d_k = argmax p_k; the added token is argmax p_{a+1}. Every emitted token
          is the target's argmax given the tokens before it, so the output equals AR greedy decoding.
  T > 0   Leviathan et al. / Chen et al. rejection sampling: accept d_k with probability min(1, p_k(d_k)/q_k(d_k)),
          left to right; at the first rejection (slot a+1) resample from norm(max(0, p_{a+1} − q_{a+1})); after
          γ acceptances sample the bonus from p_{γ+1}. Per slot, P(emit t) = q(t)·min(1, p(t)/q(t)) +
          (1 − Σ_s min(q(s), p(s)))·max(0, p(t) − q(t))/Σ_s max(0, p(s) − q(s)) = min(q(t), p(t)) +
          max(0, p(t) − q(t)) = p(t): each emitted token has the target's conditional distribution given the
          tokens before it, whatever q is, so the sequence has AR sampling's distribution.

Both return (a_B, next_B): the number of accepted drafts (0..γ) and the token added after them (the resample
or the bonus), int32 [B].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv4.sampling import filter_logits


def greedy_accept(target_logits_BNV, drafts_BG):
  """T = 0: longest exact prefix match against the target's argmax, then the target's argmax as the new token."""
  G = drafts_BG.shape[1]
  best_BN = jnp.argmax(target_logits_BNV, axis=-1).astype(jnp.int32)
  a_B = jnp.sum(jnp.cumprod(drafts_BG == best_BN[:, :G], axis=1), axis=1).astype(jnp.int32)
  return a_B, jnp.take_along_axis(best_BN, a_B[:, None], axis=1)[:, 0]


def processed_probs(logits_XV, temperature: float, top_k: int, top_p: float):
  """softmax(filter_logits(...)): the distribution `dsv4.generate` and the drafters' proposals sample from."""
  return jax.nn.softmax(filter_logits(logits_XV, temperature, top_k, top_p), axis=-1)


def rejection_accept(target_logits_BNV, draft_logits_BGV, drafts_BG, key, temperature: float, top_k: int = 0,
                     top_p: float = 1.0):
  """T > 0: Leviathan/Chen rejection sampling with residual resampling (see the module docstring)."""
  B, G = drafts_BG.shape
  p_BNV = processed_probs(target_logits_BNV, temperature, top_k, top_p)
  q_BGV = processed_probs(draft_logits_BGV, temperature, top_k, top_p)
  p_d_BG = jnp.take_along_axis(p_BNV[:, :G], drafts_BG[..., None], axis=-1)[..., 0]
  q_d_BG = jnp.take_along_axis(q_BGV, drafts_BG[..., None], axis=-1)[..., 0]
  key_u, key_r = jax.random.split(key)
  u_BG = jax.random.uniform(key_u, (B, G))
  # u < p/q, written without the division: q(d) > 0 for a token sampled from q.
  ok_BG = u_BG * q_d_BG < p_d_BG
  a_B = jnp.sum(jnp.cumprod(ok_BG, axis=1), axis=1).astype(jnp.int32)
  return a_B, _added_token(p_BNV, q_BGV, a_B, key_r)


def _added_token(p_BNV, q_BGV, a_B, key):
  """The token after a_B accepted drafts: from norm(max(0, p − q)) at the rejected slot, from p_{γ+1} after all."""
  G = q_BGV.shape[1]
  p_BV = jnp.take_along_axis(p_BNV, a_B[:, None, None], axis=1)[:, 0]
  q_BV = jnp.take_along_axis(q_BGV, jnp.minimum(a_B, G - 1)[:, None, None], axis=1)[:, 0]
  q_BV = jnp.where((a_B < G)[:, None], q_BV, 0.0)
  resid_BV = jnp.maximum(p_BV - q_BV, 0.0)
  # Zero residual mass means p = q at that slot, where a rejection has probability 0: fall back on p.
  dist_BV = jnp.where(jnp.sum(resid_BV, axis=-1, keepdims=True) > 0, resid_BV, p_BV)
  return jax.random.categorical(key, jnp.log(dist_BV)).astype(jnp.int32)


def lossless_accept(target_logits_BNV, draft_logits_BGV, drafts_BG, key, temperature: float, top_k: int = 0,
                    top_p: float = 1.0):
  """The rule the speculative loop uses: `greedy_accept` at temperature 0, else `rejection_accept`."""
  if temperature == 0.0:
    return greedy_accept(target_logits_BNV, drafts_BG)
  return rejection_accept(target_logits_BNV, draft_logits_BGV, drafts_BG, key, temperature, top_k, top_p)
