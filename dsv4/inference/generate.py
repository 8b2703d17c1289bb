"""Batched generation with the whole decode loop inside one jit (`lax.while_loop`).

Prompts of different lengths are prefilled in one extend (right-padded, per-row valid counts); then each
step samples one token per row and appends it, until every row has hit EOS or `max_new_tokens`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.sampling import row_keys, sample


def _check_prompts(prompts, max_new_tokens: int, vocab_size: int, max_positions: int, eos_id):
  if not isinstance(prompts, list | tuple) or not prompts:
    raise ValueError("prompts: give a non-empty list of token-id lists.")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token (e.g. BOS).")
    arr = np.asarray(p)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
      raise ValueError(f"prompts[{i}] must be a flat list of integer token ids.")
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
      raise ValueError(f"prompts[{i}] has token id(s) {bad[:5].tolist()} outside the vocabulary [0, {vocab_size}).")
    if len(p) + max_new_tokens > max_positions:
      raise ValueError(f"prompts[{i}] has {len(p)} tokens; with max_new_tokens={max_new_tokens} that exceeds the "
                       f"model's max_position_embeddings ({max_positions}). Shorten the prompt or generate less.")
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be ≥ 1, got {max_new_tokens}.")
  if eos_id is not None and not 0 <= eos_id < vocab_size:
    raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {vocab_size}).")


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "max_len", "temperature", "top_k",
                                             "top_p"))
def _generate(graphdef, params, prompt_BP, prompt_len_B, seed, eos_id, *, max_new_tokens, max_len, temperature,
              top_k, top_p):
  """eos_id is traced (−1: none) so changing it does not recompile."""
  model = nnx.merge(graphdef, params)
  B = prompt_BP.shape[0]
  out, state = model.extend(model.init_state(B, max_len), prompt_BP, prompt_len_B)
  logits_BV = jnp.take_along_axis(out.logits_BNV, (prompt_len_B - 1)[:, None, None], axis=1)[:, 0]
  tokens_BM = jnp.zeros((B, max_new_tokens), jnp.int32)
  done_B = jnp.zeros((B,), bool)
  n_new_B = jnp.zeros((B,), jnp.int32)

  def cond(carry):
    step, _, _, _, done_B, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done_B)

  def body(carry):
    step, state, logits_BV, tokens_BM, done_B, n_new_B = carry
    next_B = sample(logits_BV, row_keys(seed, step, B), temperature, top_k, top_p)
    live_B = ~done_B
    tokens_BM = tokens_BM.at[:, step].set(jnp.where(live_B, next_B, 0))
    n_new_B = n_new_B + live_B
    done_B = done_B | (live_B & (next_B == eos_id))
    out, state = model.extend(state, next_B[:, None], live_B.astype(jnp.int32))
    return step + 1, state, out.logits_BNV[:, 0], tokens_BM, done_B, n_new_B

  carry = (jnp.int32(0), state, logits_BV, tokens_BM, done_B, n_new_B)
  _, _, _, tokens_BM, _, n_new_B = jax.lax.while_loop(cond, body, carry)
  return tokens_BM, n_new_B


def padded_width(lengths, bucket: int = 1, limit: int | None = None) -> int:
  """The prompt buffer's width: the longest prompt rounded up to a multiple of `bucket`, so prompts of nearby
  lengths share one compiled decode loop (the padding is masked, as a shorter prompt's in a batch is); never past
  `limit` (the positions left after the new tokens) unless the longest prompt itself is."""
  if isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1:
    raise ValueError(f"prompt_bucket must be an integer ≥ 1, got {bucket!r}.")
  longest = int(np.max(lengths))
  width = -(-longest // bucket) * bucket
  return max(longest, min(width, limit)) if limit is not None else width


def pad_prompts(prompts, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Right-padded int32 ids [B, P] and lengths [B]; P is the longest prompt, or `width` (≥ it) when given."""
  lengths = np.array([len(p) for p in prompts], np.int32)
  padded = np.zeros((len(prompts), max(int(lengths.max()), width or 0)), np.int32)
  for i, p in enumerate(prompts):
    padded[i, :len(p)] = p
  return padded, lengths


def prefill(model, prompts: list[list[int]], max_len: int, width: int | None = None):
  """A decode state holding the prompts (checked first) and each prompt's last-position logits [B, V]; `width`
  pads the prompt buffer as `pad_prompts` does."""
  cfg = model.config
  _check_prompts(prompts, 1, cfg.vocab_size, cfg.max_position_embeddings + 1, None)
  too_long = [i for i, p in enumerate(prompts) if len(p) > max_len]
  if too_long:
    raise ValueError(f"prompts {too_long} are longer than max_len={max_len}; raise max_len or shorten them.")
  padded, lengths = pad_prompts(prompts, width)
  graphdef, params = nnx.split(model)
  return _prefill(graphdef, params, jnp.asarray(padded), jnp.asarray(lengths), max_len=max_len)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill(graphdef, params, prompt_BP, prompt_len_B, *, max_len):
  model = nnx.merge(graphdef, params)
  out, state = model.extend(model.init_state(prompt_BP.shape[0], max_len), prompt_BP, prompt_len_B)
  return state, jnp.take_along_axis(out.logits_BNV, (prompt_len_B - 1)[:, None, None], axis=1)[:, 0]


def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
             top_k: int = 0, seed: int = 0, eos_id: int | None = None, prompt_bucket: int = 1) -> list[list[int]]:
  """New tokens for each prompt (EOS included when hit). Greedy when temperature is 0. `prompt_bucket` > 1 pads
  the prompt buffer to a multiple of it (`padded_width`): one compilation for many prompt lengths."""
  cfg = model.config
  _check_prompts(prompts, max_new_tokens, cfg.vocab_size, cfg.max_position_embeddings, eos_id)
  if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
    raise ValueError(f"need temperature ≥ 0, 0 < top_p ≤ 1, top_k ≥ 0; got {temperature}, {top_p}, {top_k}.")
  lengths = [len(p) for p in prompts]
  padded, lengths = pad_prompts(prompts, padded_width(lengths, prompt_bucket,
                                                      cfg.max_position_embeddings - max_new_tokens))
  graphdef, params = nnx.split(model)
  tokens, n_new = _generate(graphdef, params, jnp.asarray(padded), jnp.asarray(lengths), jnp.uint32(seed),
                            jnp.int32(-1 if eos_id is None else eos_id), max_new_tokens=max_new_tokens,
                            max_len=padded.shape[1] + max_new_tokens, temperature=float(temperature),
                            top_k=int(top_k), top_p=float(top_p))
  tokens, n_new = np.asarray(tokens), np.asarray(n_new)
  return [tokens[i, :n_new[i]].tolist() for i in range(len(prompts))]
