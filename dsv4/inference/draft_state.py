"""Per-drafter-kind state for the speculative loop: start it from the prefill, propose from it, extend it.

Every adapter is a small frozen dataclass (hashable, so it is a static argument of the jitted loop) with
  init(drafter, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len) -> state
      from the prefill's target outputs over the prompt (`pre`, an ExtendOutput) and the first generated token;
  propose(drafter, frozen, state, anchor_B, pos_B, key, temperature, top_k, top_p) -> Proposal of `steps` drafts
      for the anchor at position pos_B (= the committed length before it: the anchor is not yet in any cache);
  commit(drafter, frozen, state, out, fed_BN, emitted_BN, pos_B, a_B) -> state
      after a round: the target verified fed_BN = [anchor, d_1..d_γ] at positions pos..pos+γ (its outputs `out`),
      a_B drafts were accepted and emitted_BN[:, :a+1] = [d_1..d_a, new token] committed, so rows pos..pos+a are
      final and the new anchor sits at pos+a+1.
The state is extended at the verified rows only, never recomputed. Commit writes all γ+1 verified rows (static
shapes); the rows past pos+a hold rejected tokens' entries, which stay invisible (every read is limited to rows
< the context length) and are overwritten by the next round, which writes from pos+a+1 on.

  DSpark / DFlash  ContextKV [N, B, S, J, K]: entry s = per-layer K/V of fc(taps[s]) at position s.
  EAGLE-3          ContextKV [1, B, S, J, K]: entry s = K/V of u(token[s], fc(taps[s−1])); plus taps[pos−1],
                   the feature of the anchor's first step.
  MTP              MTPCache [B, S, K]: entry s = key of (target streams[s], token[s+1]); plus streams[pos−1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dsv4.drafters.context import ContextKV
from dsv4.drafters.mtp import MTPCache


def _pad_rows(x, axis: int, size: int):
  """Zero-pads axis `axis` to `size` rows (the fixed-size buffer a state lives in)."""
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _row(x_BN, idx_B):
  """x[b, idx[b]] for every b: [B, N, ...] -> [B, ...]."""
  return jax.vmap(lambda x, i: x[i])(x_BN, idx_B)


def _positions(start_B, n: int):
  return start_B[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]


@dataclasses.dataclass(frozen=True)
class DSparkState:
  """DSpark and DFlash (one class; DFlash has no heads): one backbone pass per round, then the slots in order."""

  steps: int
  tap_layers: tuple[int, ...]

  def init(self, drafter, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len):
    ctx = drafter.context_kv(pre.taps_BNLD)
    return ContextKV(_pad_rows(ctx.k_NBSJK, 2, max_len), _pad_rows(ctx.v_NBSJK, 2, max_len))

  def propose(self, drafter, frozen, ctx, anchor_B, pos_B, key, temperature, top_k, top_p):
    return drafter.propose(ctx, frozen, anchor_B, pos_B, temperature=temperature, key=key, top_k=top_k,
                           top_p=top_p, steps=self.steps)

  def commit(self, drafter, frozen, ctx, out, fed_BN, emitted_BN, pos_B, a_B):
    return ctx.write(drafter.context_kv(out.taps_BNLD, _positions(pos_B, fed_BN.shape[1])), pos_B)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Eagle3Cache:
  ctx: ContextKV
  prev_taps_BLD: jax.Array    # taps of the row before the anchor


@dataclasses.dataclass(frozen=True)
class Eagle3State:
  """EAGLE-3: `steps` calls of its one layer per round, each seeing the context entries and its own chain."""

  steps: int
  tap_layers: tuple[int, ...]

  def init(self, drafter, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len):
    taps = pre.taps_BNLD
    prev = jnp.concatenate([jnp.zeros_like(taps[:, :1]), taps[:, :-1]], axis=1)  # zeros before a document's start
    P = prompt_BP.shape[1]
    ctx = drafter.context_kv(frozen, prompt_BP, prev, _positions(jnp.zeros_like(prompt_len_B), P))
    ctx = ContextKV(_pad_rows(ctx.k_NBSJK, 2, max_len), _pad_rows(ctx.v_NBSJK, 2, max_len))
    return Eagle3Cache(ctx, _row(taps, prompt_len_B - 1))

  def propose(self, drafter, frozen, state, anchor_B, pos_B, key, temperature, top_k, top_p):
    return drafter.propose(state.ctx, frozen, state.prev_taps_BLD, anchor_B, pos_B, temperature=temperature, key=key,
                           top_k=top_k, top_p=top_p, steps=self.steps)

  def commit(self, drafter, frozen, state, out, fed_BN, emitted_BN, pos_B, a_B):
    taps = out.taps_BNLD
    prev = jnp.concatenate([state.prev_taps_BLD[:, None], taps[:, :-1]], axis=1)
    new = drafter.context_kv(frozen, fed_BN, prev, _positions(pos_B, fed_BN.shape[1]))
    return Eagle3Cache(state.ctx.write(new, pos_B), _row(taps, a_B))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MTPCarry:
  cache: MTPCache
  streams_BND: jax.Array      # target streams of the row before the anchor


@dataclasses.dataclass(frozen=True)
class MTPState:
  """The target's MTP module: MTP-1 (one step) or MTP-k chained on its own output streams."""

  steps: int
  tap_layers: tuple[int, ...] = ()

  def init(self, drafter, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len):
    B, P = prompt_BP.shape
    # The token after row s: the prompt's next token, and the first generated token after the prompt's last row.
    next_BP = jnp.concatenate([prompt_BP[:, 1:], jnp.zeros((B, 1), prompt_BP.dtype)], axis=1)
    next_BP = jnp.where(jnp.arange(P)[None, :] == (prompt_len_B - 1)[:, None], first_B[:, None], next_BP)
    keys = drafter.context_keys(frozen, pre.streams_BNHD, next_BP, _positions(jnp.zeros_like(prompt_len_B), P))
    return MTPCarry(MTPCache(_pad_rows(keys, 1, max_len)), _row(pre.streams_BNHD, prompt_len_B - 1))

  def propose(self, drafter, frozen, state, anchor_B, pos_B, key, temperature, top_k, top_p):
    return drafter.propose(state.cache, frozen, state.streams_BND, anchor_B, pos_B, temperature=temperature, key=key,
                           top_k=top_k, top_p=top_p, steps=self.steps)

  def commit(self, drafter, frozen, state, out, fed_BN, emitted_BN, pos_B, a_B):
    cache = drafter.extend(state.cache, frozen, out.streams_BNHD, emitted_BN, pos_B)
    return MTPCarry(cache, _row(out.streams_BNHD, a_B))


def adapter_for(drafter, steps: int):
  """The adapter of a drafter module (DSpark/DFlash, Eagle3 or MTPDrafter), drafting `steps` tokens per round."""
  from dsv4.drafters.dspark import DSpark
  from dsv4.drafters.eagle3 import Eagle3
  from dsv4.drafters.mtp import MTPDrafter
  if isinstance(drafter, DSpark):
    return DSparkState(steps, tuple(drafter.config.target_layer_ids))
  if isinstance(drafter, Eagle3):
    return Eagle3State(steps, tuple(drafter.config.target_layer_ids))
  if isinstance(drafter, MTPDrafter):
    return MTPState(steps)
  raise TypeError(f"drafter: {type(drafter).__name__} is not a drafter the speculative loop knows (DSpark/DFlash, "
                  "Eagle3, MTPDrafter); pass what dsv4.load_drafter returns or one of those modules.")
