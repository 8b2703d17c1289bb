"""Speculative decoding: draft → verify → accept, the whole generation inside one jit (`lax.while_loop`).

Round structure. Prefill runs the target over the prompts (right-padded, per-row lengths) and samples the first
new token from its last-position distribution, exactly as `dsv4.generate` does. That token is the first
*anchor*: the last committed token, not yet fed to the target cache. The drafter starts its state (context K/V,
EAGLE-3 entries, MTP cache) from the prefill's target outputs. Then, while any row is live, one round:

  1. propose  the drafter drafts γ tokens d_1..d_γ after the anchor from its own state (DSpark/DFlash: the
              backbone once over the trained block, then the sequential head slot by slot; EAGLE-3 and MTP-k:
              γ chained steps), sampling each from q_k = softmax(filter_logits(drafter logits)) at T > 0;
  2. verify   the target extends its cache by [anchor, d_1..d_γ] in one call (taps / streams requested for the
              drafter), giving γ+1 distributions p_1..p_{γ+1} (p_k predicts the token after d_{k−1});
  3. accept   `dsv4.inference.acceptance.lossless_accept`: a drafts kept (0..γ) and one token added by the
              target (T = 0: its argmax; T > 0: the residual resample or the bonus), see that module for the
              proof that the output distribution equals AR sampling's;
  4. emit     [d_1..d_a, added] is appended per row, cut after an EOS (tokens after EOS are never emitted) and
              at max_new_tokens (never a token more);
  5. roll back  the target cache to the anchor + a accepted drafts (`dsv4.model.decode.rollback`: a length
              change); the drafter's state is extended at the verified rows (rows past the accepted ones stay
              invisible and are overwritten next round). The added token is the next round's anchor.

Rows advance by different amounts per round; a finished row (EOS or max_new_tokens) feeds nothing more and its
rounds are not counted. The host is not consulted between rounds. Lossless: every emitted token is the target's
(T = 0: argmax; T > 0: a sample of its processed distribution) given the tokens before it, so speculative output
equals `dsv4.generate`'s at T = 0 token for token, and its distribution at T > 0.

The target is any module with `config` (vocab_size, hidden_size, max_position_embeddings), `init_state(batch,
max_len)` and `extend(state, tokens_BN, n_valid_B, tap_layers) -> (out with logits_BNV / taps_BNLD /
streams_BNHD, state)` whose state has `lengths_B` (rollback is `dsv4.model.decode.rollback`).

Statistics (per round of a live row; all rounds of all rows pooled, round-major):
  round_accepted  drafts accepted and emitted in the round (cut by EOS or max_new_tokens like the output)
  round_verified  drafts that passed verification, before those cuts (for survival / conditional acceptance)
  round_proposed  drafts proposed (= γ)
  round_bonus     1 if the round emitted the target's added token (resample or bonus), 0 if it ended on an
                  accepted EOS draft or was cut by max_new_tokens before it
  round_row       the batch row of the round
  τ = Σ (accepted + bonus) / rounds (DESIGN.md; τ ≤ γ + 1); accepted_per_position[k−1] = rounds with ≥ k
  accepted (k = 1..γ). The first token (from the prefill) belongs to no round.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.inference.acceptance import lossless_accept
from dsv4.inference.draft_state import adapter_for
from dsv4.inference.generate import pad_prompts, padded_width
from dsv4.model.decode import rollback
from dsv4.sampling import row_keys, sample


def _emit(drafts_BG, a_B, added_B, n_new_B, live_B, eos_id, max_new_tokens: int):
  """The round's output per row: tokens [d_1..d_a, added] (padded to γ+1), how many are emitted, whether an
  emitted token is EOS."""
  G = drafts_BG.shape[1]
  j_N = jnp.arange(G + 1)[None, :]
  drafts_BN = jnp.concatenate([drafts_BG, jnp.zeros_like(drafts_BG[:, :1])], axis=1)
  tokens_BN = jnp.where(j_N < a_B[:, None], drafts_BN, added_B[:, None])
  is_eos_BN = (tokens_BN == eos_id) & (j_N <= a_B[:, None])
  hit_B = jnp.any(is_eos_BN, axis=1)
  n_B = jnp.where(hit_B, jnp.argmax(is_eos_BN, axis=1) + 1, a_B + 1)
  n_B = jnp.where(live_B, jnp.minimum(n_B, max_new_tokens - n_new_B), 0)
  eos_B = hit_B & (jnp.argmax(is_eos_BN, axis=1) < n_B)
  return tokens_BN, n_B, eos_B


@functools.partial(jax.jit, static_argnames=("tgraph", "dgraph", "adapter", "accept", "gamma", "max_new_tokens",
                                             "max_len", "temperature", "top_k", "top_p"))
def _speculate(tgraph, tparams, dgraph, dparams, frozen, prompt_BP, prompt_len_B, seed, eos_id, *, adapter, accept,
               gamma, max_new_tokens, max_len, temperature, top_k, top_p):
  """(tokens [B, M + γ + 1] (row b's output is its first n_new[b]), n_new [B], the per-round logs (accepted,
  verified, bonus, live), each [M, B] with rows ≥ rounds unused, rounds)."""
  target, drafter = nnx.merge(tgraph, tparams), nnx.merge(dgraph, dparams)
  B = prompt_BP.shape[0]
  M, taps = max_new_tokens, adapter.tap_layers
  pre, tstate = target.extend(target.init_state(B, max_len), prompt_BP, prompt_len_B, taps)
  last_BV = jnp.take_along_axis(pre.logits_BNV, (prompt_len_B - 1)[:, None, None], axis=1)[:, 0]
  first_B = sample(last_BV, row_keys(seed, 0, B), temperature, top_k, top_p)  # AR's first step, same key
  dstate = adapter.init(drafter, frozen, pre, prompt_BP, prompt_len_B, first_B, max_len)
  tokens_BX = jnp.zeros((B, M + gamma + 1), jnp.int32).at[:, 0].set(first_B)
  n_new_B = jnp.ones((B,), jnp.int32)
  done_B = (first_B == eos_id) | (M <= 1)
  logs = tuple(jnp.zeros((M, B), jnp.int32) for _ in range(4))
  base_key = jax.random.fold_in(jax.random.key(seed), 1)

  def cond(carry):
    r, done_B = carry[0], carry[5]
    return (r < M) & ~jnp.all(done_B)

  def body(carry):
    r, tstate, dstate, anchor_B, tokens_BX, done_B, n_new_B, logs = carry
    live_B = ~done_B
    pos_B = tstate.lengths_B
    key = jax.random.fold_in(base_key, r)
    prop = adapter.propose(drafter, frozen, dstate, anchor_B, pos_B, jax.random.fold_in(key, 0), temperature,
                           top_k, top_p)
    drafts_BG = prop.tokens_BG
    fed_BN = jnp.concatenate([anchor_B[:, None], drafts_BG], axis=1)
    out, tstate = target.extend(tstate, fed_BN, live_B.astype(jnp.int32) * (gamma + 1), taps)
    a_B, added_B = accept(out.logits_BNV, prop.logits_BGV, drafts_BG, jax.random.fold_in(key, 1), temperature,
                          top_k, top_p)
    emitted_BN, n_B, eos_B = _emit(drafts_BG, a_B, added_B, n_new_B, live_B, eos_id, M)
    j_N = jnp.arange(gamma + 1)[None, :]
    idx_BN = jnp.where(j_N < n_B[:, None], n_new_B[:, None] + j_N, tokens_BX.shape[1])
    tokens_BX = tokens_BX.at[jnp.arange(B)[:, None], idx_BN].set(emitted_BN, mode="drop")
    n_new_B = n_new_B + n_B
    done_B = done_B | (live_B & (eos_B | (n_new_B >= M)))
    accepted_B = jnp.minimum(a_B, n_B)
    logs = tuple(log.at[r].set(v.astype(jnp.int32)) for log, v in
                 zip(logs, (accepted_B, a_B, n_B > a_B, live_B), strict=True))
    tstate = rollback(tstate, jnp.where(live_B, pos_B + a_B + 1, tstate.lengths_B))
    dstate = adapter.commit(drafter, frozen, dstate, out, fed_BN, emitted_BN, pos_B, a_B)
    anchor_B = jnp.where(live_B, added_B, anchor_B)
    return r + 1, tstate, dstate, anchor_B, tokens_BX, done_B, n_new_B, logs

  carry = (jnp.int32(0), tstate, dstate, first_B, tokens_BX, done_B, n_new_B, logs)
  rounds, _, _, _, tokens_BX, _, n_new_B, logs = jax.lax.while_loop(cond, body, carry)
  return tokens_BX, n_new_B, logs, rounds


def run_speculative(target, drafter, frozen, prompts, max_new_tokens: int, *, gamma: int, temperature: float,
                    top_p: float, top_k: int, seed: int, eos_id, adapter=None, accept=lossless_accept,
                    prompt_bucket: int = 1):
  """`speculative_generate` without its input checks: (token lists, stats). `adapter` and `accept` default to the
  drafter's own state adapter (dsv4.inference.draft_state) and the lossless rule; tests pass others (an oracle
  drafter, deliberately broken rules)."""
  adapter = adapter_for(drafter, gamma) if adapter is None else adapter
  padded, lengths = pad_prompts(prompts, prompt_width(target.config, prompts, max_new_tokens, gamma, prompt_bucket))
  tgraph, tparams = nnx.split(target)
  dgraph, dparams = nnx.split(drafter)
  tokens, n_new, logs, _ = _speculate(
      tgraph, tparams, dgraph, dparams, frozen, jnp.asarray(padded), jnp.asarray(lengths), jnp.uint32(seed),
      jnp.int32(-1 if eos_id is None else eos_id), adapter=adapter, accept=accept, gamma=gamma,
      max_new_tokens=max_new_tokens, max_len=max_len_for([padded.shape[1]], max_new_tokens, gamma),
      temperature=float(temperature), top_k=int(top_k), top_p=float(top_p))
  tokens, n_new = np.asarray(tokens), np.asarray(n_new)
  return [tokens[i, :n_new[i]].tolist() for i in range(len(prompts))], round_stats(logs, gamma)


def prompt_width(cfg, prompts, max_new_tokens: int, gamma: int, prompt_bucket: int = 1) -> int:
  """The prompt buffer's width for `prompt_bucket` (dsv4.inference.generate.padded_width), within the positions."""
  return padded_width([len(p) for p in prompts], prompt_bucket,
                      cfg.max_position_embeddings - max_new_tokens - gamma - 1)


def max_len_for(lengths, max_new_tokens: int, gamma: int) -> int:
  """Cache rows: the longest prompt, the new tokens, and a verified block past the last anchor."""
  return int(np.max(lengths)) + max_new_tokens + gamma + 1


def round_stats(logs, gamma: int) -> dict:
  """The per-round logs of live rows, pooled round-major, and their sums (definitions in the module docstring)."""
  accepted, verified, bonus, live = (np.asarray(x) for x in logs)
  keep = live.astype(bool)
  rows = np.broadcast_to(np.arange(live.shape[1])[None, :], live.shape)
  round_accepted, round_bonus = accepted[keep].astype(np.int64), bonus[keep].astype(np.int64)
  rounds = int(keep.sum())
  return dict(
      tau=float((round_accepted + round_bonus).sum() / rounds) if rounds else float("nan"),
      rounds=rounds,
      proposed=rounds * gamma,
      accepted=int(round_accepted.sum()),
      accepted_per_position=[int((round_accepted >= k).sum()) for k in range(1, gamma + 1)],
      block_size=gamma,
      round_accepted=round_accepted,
      round_verified=verified[keep].astype(np.int64),
      round_proposed=np.full(rounds, gamma, np.int64),
      round_bonus=round_bonus,
      round_row=rows[keep].astype(np.int64),
  )


# --- the public entry point: inputs checked before anything compiles ------------------------------------------
def _unwrap(target, drafter):
  """(drafter module, its DrafterConfig, FrozenTarget of `target`), refusing a drafter made for another target."""
  from dsv4.drafters.context import FrozenTarget
  from dsv4.io.drafter_checkpoint import LoadedDrafter, check_target
  if isinstance(drafter, LoadedDrafter):
    module, cfg = drafter.model, drafter.config
    if drafter.target is not target:
      check_target(cfg, drafter.meta["target"], target.config)
  else:
    module, cfg = drafter, getattr(drafter, "config", None)
    adapter_for(module, 1)  # a TypeError naming what is accepted
  check_fits(module, cfg, target.config)
  return module, cfg, FrozenTarget.of(target)


def check_fits(module, cfg, target_cfg) -> None:
  """The drafter reads this target: its width, vocabulary (the sequential head's tables) and tapped layers."""
  from dsv4.drafters.mtp import MTPDrafter
  cfg.check_against_target(target_cfg)  # ConfigError (a ValueError) naming target_layer_ids / hidden_size / kind
  head = getattr(module, "seq_head", None)
  if head is not None and head.w1.shape[0] != target_cfg.vocab_size:
    raise ValueError(f"drafter: its sequential head has a vocabulary of {head.w1.shape[0]} but the target's "
                     f"vocab_size is {target_cfg.vocab_size}; pass the target the drafter was trained for.")
  if isinstance(module, MTPDrafter) and module.hc_mult != target_cfg.hc_mult:
    raise ValueError(f"drafter: the MTP module reads {module.hc_mult} residual streams but the target has hc_mult="
                     f"{target_cfg.hc_mult}; pass the target the drafter was built from.")


def _check_request(target_cfg, prompts, max_new_tokens, gamma, temperature, top_p, top_k, eos_id):
  from dsv4.inference.generate import _check_prompts
  if not isinstance(temperature, int | float) or temperature < 0:
    raise ValueError(f"temperature must be a number ≥ 0 (0 is greedy), got {temperature!r}.")
  if not isinstance(top_p, int | float) or not 0 < top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1] (1 keeps every token), got {top_p!r}.")
  if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
    raise ValueError(f"top_k must be an integer ≥ 0 (0 keeps every token), got {top_k!r}.")
  _check_prompts(prompts, max_new_tokens, target_cfg.vocab_size, target_cfg.max_position_embeddings, eos_id)
  limit = target_cfg.max_position_embeddings
  for i, p in enumerate(prompts):
    if len(p) + max_new_tokens + gamma > limit:
      raise ValueError(f"prompts[{i}] has {len(p)} tokens; with max_new_tokens={max_new_tokens} and block_size "
                       f"{gamma} (a round verifies γ drafts past the last anchor) positions reach "
                       f"{len(p) + max_new_tokens + gamma}, beyond the target's max_position_embeddings ({limit}). "
                       "Shorten the prompt, generate less or verify a smaller block.")


def speculative_generate(target, drafter, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                         eos_id=None, block_size=None, prompt_bucket=1):
  """Speculative decoding of `prompts` with `drafter` verified by `target`: (new tokens per prompt, stats).

  `drafter` is what `dsv4.load_drafter` returns (a LoadedDrafter) or a bare drafter module (DSpark/DFlash,
  Eagle3, MTPDrafter) built for `target`. `block_size` (default: the drafter's trained γ) verifies that many
  drafts per round, at most the trained γ. `prompt_bucket` > 1 pads the prompt buffer to a multiple of it, as
  `dsv4.generate` does: one compilation for many prompt lengths. Output equals `dsv4.generate(target, prompts,
  ...)` token for token at temperature 0 and in distribution at temperature > 0 (same temperature / top-k / top-p
  processing).

  stats: plain numbers `tau`, `rounds`, `proposed`, `accepted`, `accepted_per_position` (list of γ counts),
  `block_size`; numpy per-round logs `round_accepted`, `round_verified`, `round_proposed`, `round_bonus`,
  `round_row` (see dsv4.inference.speculative for the definitions).
  """
  module, cfg, frozen = _unwrap(target, drafter)
  gamma = cfg.block_size if block_size is None else block_size
  if not isinstance(gamma, int) or isinstance(gamma, bool) or not 1 <= gamma <= cfg.block_size:
    raise ValueError(f"block_size must be an integer in [1, {cfg.block_size}] (the drafter was trained with "
                     f"block_size {cfg.block_size}; it cannot draft more), got {block_size!r}.")
  _check_request(target.config, prompts, max_new_tokens, gamma, temperature, top_p, top_k, eos_id)
  return run_speculative(target, module, frozen, prompts, max_new_tokens, gamma=gamma, temperature=temperature,
                         top_p=top_p, top_k=top_k, seed=seed, eos_id=eos_id, prompt_bucket=prompt_bucket)
