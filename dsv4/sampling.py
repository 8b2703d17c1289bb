"""Next-token sampling: greedy, temperature, top-k and top-p (nucleus), jit-friendly.

Each sequence draws from its own key, fold_in(fold_in(seed, row), step), so a row's samples do not depend
on which other prompts share its batch. A top-level module because generation, the drafters' proposals and the
speculative acceptance rule all filter with the same `filter_logits` (q and p must be processed alike).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def filter_logits(logits_BV, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """Temperature-scaled logits with everything outside the top-k / top-p set at −inf (static k, p)."""
  logits_BV = logits_BV.astype(jnp.float32) / temperature
  V = logits_BV.shape[-1]
  if 0 < top_k < V:
    kth = jax.lax.top_k(logits_BV, top_k)[0][..., -1:]
    logits_BV = jnp.where(logits_BV < kth, -jnp.inf, logits_BV)
  if top_p < 1.0:
    sorted_desc = jnp.sort(logits_BV, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass before it is < top_p.
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < top_p
    threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < threshold, -jnp.inf, logits_BV)
  return logits_BV


def row_keys(seed, step, batch: int):
  base = jax.random.key(seed)
  return jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(base, r), step))(jnp.arange(batch))


def draw(logits_XV, key, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """int32 [...] with one key for the whole array (a drafter's proposal): argmax at temperature 0, else a sample
  from softmax(filter_logits(logits)), the distribution q that lossless verification divides by."""
  if temperature == 0.0:
    return jnp.argmax(logits_XV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, filter_logits(logits_XV, temperature, top_k, top_p)).astype(jnp.int32)


def sample(logits_BV, keys_B, temperature: float, top_k: int = 0, top_p: float = 1.0):
  """int32 [B]; temperature 0 is greedy (argmax, lowest id on ties)."""
  if temperature == 0.0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  filtered = filter_logits(logits_BV, temperature, top_k, top_p)
  return jax.vmap(jax.random.categorical)(keys_B, filtered).astype(jnp.int32)
