"""The MTP drafter: the target's own multi-token-prediction module (dsv4.model.mtp) run as a drafter.

The drafter owns a copy of the target's first MTP module (`mtp.0`, so it can be fine-tuned); the embedding and
LM head stay the target's frozen ones (`FrozenTarget`). Shapes: B rows, A blocks per row, G = block_size slots,
N mHC streams, D width, V vocabulary, W the MTP block's sliding window, K its head dim. A block is anchored at
row p (position P inside its document, which starts at row c = ctx_start); MTP-1 is G = 1, MTP-k chains:

  step 0   streams = target streams at row p−1, token = tokens[p] (the anchor), position P−1
           → logits_0 predict tokens[p+1]: exactly the target's own MTP prediction at row p−1
             (`Transformer.forward(with_mtp=True).mtp_logits_KBTV[0][:, p−1]`)
  step k   streams = this module's output streams of step k−1, token = tokens[p+k] (teacher forced in training,
           the token drafted at slot k−1 at inference), position P−1+k → logits_k predict tokens[p+k+1]

An *entry* is what one step feeds the block, a (streams, token, position) triple; its attention key (= value: V4
shares one K=V head) is attn.keys(attn_norm(collapse(e_proj(enorm(embed(token))) ⊕ h_proj(hnorm(streams))))).
The *context entry* of row s is the step-0 entry (target streams[s], tokens[s+1], position of s): what an
inference-time MTP cache holds once row s is committed. Step k of a block attends to exactly
  - the context entries of rows c ≤ s ≤ p−1 (its document before the anchor; row p−1 is step 0's own entry),
  - the entries of its own steps 1..k (rows p..p−1+k, positions P..P−1+k),
each within the window (query position − key position < W), plus the block's attention sink. Nothing else: no
context entry at rows ≥ p (it would need target streams there, which inference does not have), no other block,
no other document. So the steps of one block see what MTP-k sees at inference, and a block's logits equal running
the module's whole-sequence (causal) forward over [context entries c..p−1 ; steps 1..k] and reading the last row.
Training gathers, per block, the context keys of rows p−W..p−1 (linear in W, no [T, T] mask) and runs the G
steps in order for all blocks at once; inference (`propose`) runs the same steps against an `MTPCache`.

First-token anchors: a block whose anchor is its document's first token (P = 0) has no row p−1. Its step-0
streams are zeros and it sees no context entry (attention falls back on the sink), so its logits are finite but
predict nothing an inference round meets (a round's anchor always follows a non-empty prompt).
`MTPDrafter.valid_blocks(blocks)` zeroes their supervision; the trainer applies it before the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.drafters.config import DrafterConfig
from dsv4.drafters.context import FrozenTarget
from dsv4.drafters.dspark import Proposal
from dsv4.drafters.features import Blocks, TargetFeatures
from dsv4.errors import ConfigError
from dsv4.model.attention import attend
from dsv4.model.config import ModelConfig
from dsv4.model.layers import DTYPES, KeySeq
from dsv4.model.mtp import MTPModule
from dsv4.sampling import draw


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MTPCache:
  """Context-entry keys of committed rows, [B, S, K]: row s of a sequence holds row s's key at position s (one
  document per sequence at inference). Rows at or past a sequence's ctx_len are never read, so a write may run
  past the committed length (static shapes: `extend` writes every verified row, accepted or not)."""

  keys_BSK: jax.Array

  @property
  def length(self) -> int:
    return self.keys_BSK.shape[1]

  @classmethod
  def zeros(cls, batch: int, max_len: int, head_dim: int, dtype=jnp.float32) -> MTPCache:
    return cls(jnp.zeros((batch, max_len, head_dim), dtype))

  def write(self, keys_BTK, start_B) -> MTPCache:
    """Writes keys at rows start_B..start_B+T−1; the caller keeps start + T ≤ S (dynamic_update_slice would shift
    an overflowing write back inside the buffer)."""
    row = lambda buf, upd, s: jax.lax.dynamic_update_slice(buf, upd.astype(buf.dtype), (s, 0))
    return MTPCache(jax.vmap(row)(self.keys_BSK, keys_BTK, start_B))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Context:
  """The context entries one block's steps may see: keys [B, A, W, K], their positions and visibility [B, A, W]."""

  keys_BAWK: jax.Array
  pos_BAW: jax.Array
  ok_BAW: jax.Array


def _window(keys_BSK, positions_BS, end_BA, start_BA, window: int) -> _Context:
  """Per block, the context keys of the W rows end−W..end−1 of its row, visible iff row ≥ start (its document;
  rows < 0 too are cut by start ≥ 0). Indices outside the row are clamped, their entries invisible."""
  B, S, K = keys_BSK.shape
  A = end_BA.shape[1]
  rows_BAW = end_BA[..., None] - window + jnp.arange(window, dtype=jnp.int32)
  flat_BX = jnp.clip(rows_BAW, 0, S - 1).reshape(B, A * window)
  keys = jnp.take_along_axis(keys_BSK, flat_BX[..., None], axis=1).reshape(B, A, window, K)
  pos = jnp.take_along_axis(positions_BS, flat_BX, axis=1).reshape(B, A, window)
  return _Context(keys, pos, rows_BAW >= start_BA[..., None])


class MTPDrafter(nnx.Module):
  """A copy of the target's first MTP module, drafting G = block_size tokens per round (see the module doc)."""

  feature_names = ("streams",)

  def __init__(self, cfg: DrafterConfig, target_cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "mtp":
      raise ConfigError(f"drafter.kind: MTPDrafter needs kind='mtp' (build the config with mtp_config()), got "
                        f"{cfg.kind!r}.")
    cfg.check_against_target(target_cfg)
    self.config = cfg
    self.dtype = DTYPES[cfg.dtype]
    self.mtp = MTPModule(target_cfg, rngs=KeySeq(rngs.params()), dtype=self.dtype,
                         param_dtype=DTYPES[cfg.param_dtype])
    self.hc_mult, self.hidden_size = target_cfg.hc_mult, target_cfg.hidden_size

  @classmethod
  def from_target(cls, cfg: DrafterConfig, target) -> MTPDrafter:
    """A drafter holding a copy of `target.mtp[0]` (fresh buffers cast to the drafter's dtypes, so training or
    donating the drafter never touches the target)."""
    cfg.check_against_target(target.config)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(cfg, target.config, rngs=nnx.Rngs(0))))
    copy = lambda want, have: jnp.array(have, dtype=want.dtype, copy=True)
    state["mtp"] = jax.tree.map(copy, state["mtp"], nnx.state(target.mtp[0]))
    return nnx.merge(graphdef, state)

  @staticmethod
  def valid_blocks(blocks: Blocks) -> Blocks:
    """`blocks` with no supervision on blocks anchored at their document's first token (no row p−1 to read)."""
    keep_BA1 = (blocks.anchor_pos_BA >= 1)[..., None].astype(blocks.valid_BAG.dtype)
    return dataclasses.replace(blocks, valid_BAG=blocks.valid_BAG * keep_BA1)

  # --- entries and steps --------------------------------------------------------------------------
  def _entry(self, frozen: FrozenTarget, streams_XND, ids_X):
    """The block's input streams for entries (streams, token): e_proj(enorm(embed)) ⊕ h_proj(hnorm(streams))."""
    m = self.mtp
    e = m.e_proj(m.enorm(frozen.embed(ids_X)))
    return (e[..., None, :] + m.h_proj(m.hnorm(streams_XND))).astype(streams_XND.dtype)

  def context_keys(self, frozen: FrozenTarget, streams_BTND, next_ids_BT, positions_BT):
    """Context-entry keys [B, T, K]: row t's from the target streams at t and next_ids_BT[t] = tokens[t+1], at
    positions_BT[t] (what the block's attention computes for that entry; no MoE runs)."""
    blk = self.mtp.block
    x = self._entry(frozen, streams_BTND, next_ids_BT)
    pre, _, _ = blk.attn_hc.weights(x)
    return blk.attn.keys(blk.attn_norm(blk.attn_hc.collapse(x, pre)), positions_BT)

  def _step(self, frozen: FrozenTarget, streams_BAND, ids_BA, pos_BA, ctx: _Context, chain: list, own: bool):
    """One step for every block: (final-normed hidden [B, A, D], output streams [B, A, N, D], own key [B, A, K]).

    The query sees the context entries in `ctx`, this block's earlier chain entries `chain` (a list of
    (key [B, A, K], position [B, A])) and, when `own` (steps ≥ 1), its own entry; step 0's own entry is the
    context entry of row p−1.
    """
    blk = self.mtp.block
    attn = blk.attn
    keys = {}

    def attention(a_BAD):
      q_BAHK, _ = attn.queries(a_BAD, pos_BA)
      keys["own"] = k_BAK = attn.keys(a_BAD, pos_BA)
      entries = [*chain, (k_BAK, pos_BA)] if own else chain
      kv_BASK = jnp.concatenate([ctx.keys_BAWK.astype(k_BAK.dtype)] + [k[:, :, None] for k, _ in entries], axis=2)
      kv_pos = jnp.concatenate([ctx.pos_BAW] + [p[:, :, None] for _, p in entries], axis=2)
      kv_ok = jnp.concatenate([ctx.ok_BAW] + [jnp.ones(p.shape + (1,), bool) for _, p in entries], axis=2)
      B, A, H, K = q_BAHK.shape
      S = kv_BASK.shape[2]
      o = attend(q_BAHK.reshape(B * A, 1, H, K), kv_BASK.reshape(B * A, S, K), pos_BA.reshape(B * A, 1),
                 kv_pos.reshape(B * A, S), kv_ok.reshape(B * A, S), attn.window, attn.sinks[...], attn.head_dim**-0.5)
      return attn.output(o.reshape(B, A, H, K), pos_BA)

    streams_BAND, _ = blk(self._entry(frozen, streams_BAND, ids_BA), None, None, attention)
    return self.mtp.norm(self.mtp.hc_head(streams_BAND)), streams_BAND, keys["own"]

  def _chain(self, frozen: FrozenTarget, streams_BAND, anchor_BA, pos0_BA, ctx: _Context, choose, steps=None):
    """The G steps (the first `steps` when given) from step-0 streams and token (the anchor) at position
    pos0 = P−1; `choose(k, logits_BAV)` gives step k+1's token (teacher forced or drafted). Returns float32
    logits [B, A, G, V]."""
    chain, logits, ids_BA = [], [], anchor_BA
    for k in range(self.config.block_size if steps is None else steps):
      pos_BA = pos0_BA + k
      hidden_BAD, streams_BAND, key_BAK = self._step(frozen, streams_BAND, ids_BA, pos_BA, ctx, chain, k > 0)
      if k > 0:
        chain.append((key_BAK, pos_BA))
      logits.append(frozen.head(hidden_BAD))
      ids_BA = choose(k, logits[-1])
    return jnp.stack(logits, axis=2)

  # --- training: many teacher-forced blocks ---------------------------------------------------------
  def _check(self, feats: TargetFeatures, blocks: Blocks):
    s = feats.streams_BTND
    if s is None:
      raise ValueError("feats.streams_BTND is None: the MTP drafter reads the target's residual streams "
                       f"(feature_names={self.feature_names}); keep TargetOutput.streams_BTND in the features.")
    B, T = feats.tokens_BT.shape
    want = (B, T, self.hc_mult, self.hidden_size)
    if s.shape != want:
      raise ValueError(f"feats.streams_BTND has shape {s.shape}, expected {want} (tokens [B, T], the target's "
                       "hc_mult streams of hidden_size): pass the streams of the target this drafter was built for.")
    G = self.config.block_size
    if blocks.prev_BAG.shape[0] != B or blocks.prev_BAG.shape[-1] != G:
      raise ValueError(f"blocks.prev_BAG has shape {blocks.prev_BAG.shape}, expected [{B}, A, {G}] (batch {B}, "
                       f"drafter.block_size {G}); build the blocks with make_blocks(..., block_size={G}).")

  def train_logits(self, feats: TargetFeatures, blocks: Blocks, frozen: FrozenTarget):
    """(logits [B, A, G, V] float32, None): every block teacher-forced (step k reads blocks.prev_BAG[..., k] =
    tokens[p+k]), seeing the context entries of rows ctx_start..anchor−1 (see the module doc). Apply
    `valid_blocks` to the blocks the loss reads."""
    self._check(feats, blocks)
    B, T = feats.tokens_BT.shape
    next_ids_BT = jnp.concatenate([feats.tokens_BT[:, 1:], jnp.zeros((B, 1), feats.tokens_BT.dtype)], axis=1)
    keys_BTK = self.context_keys(frozen, feats.streams_BTND, next_ids_BT, feats.positions_BT)
    ctx = _window(keys_BTK, feats.positions_BT, blocks.anchor_BA, blocks.ctx_start_BA, self.mtp.block.attn.window)
    prev_row_BA = jnp.clip(blocks.anchor_BA - 1, 0, T - 1)
    streams_BAND = jnp.take_along_axis(feats.streams_BTND, prev_row_BA[..., None, None], axis=1)
    streams_BAND = jnp.where((blocks.anchor_pos_BA >= 1)[..., None, None], streams_BAND, 0)
    prev_BAG = blocks.prev_BAG
    teacher = lambda k, _: prev_BAG[..., min(k + 1, prev_BAG.shape[-1] - 1)]
    return self._chain(frozen, streams_BAND, prev_BAG[..., 0], blocks.anchor_pos_BA - 1, ctx, teacher), None

  # --- inference: one block per sequence ------------------------------------------------------------
  def extend(self, cache: MTPCache, frozen: FrozenTarget, streams_BTND, next_ids_BT, start_B) -> MTPCache:
    """Writes the context entries of rows start..start+T−1: target streams_BTND[:, t] of row start+t and the
    token after it, next_ids_BT[:, t], at position start+t. After a round commits rows up to the new anchor p,
    rows < p are final (their streams come from the verify forward, their next token is committed)."""
    T = next_ids_BT.shape[1]
    positions_BT = start_B[:, None] + jnp.arange(T, dtype=jnp.int32)
    return cache.write(self.context_keys(frozen, streams_BTND, next_ids_BT, positions_BT), start_B)

  def propose(self, cache: MTPCache, frozen: FrozenTarget, streams_BND, anchor_B, ctx_len_B, *,
              temperature: float = 0.0, key=None, top_k: int = 0, top_p: float = 1.0,
              steps: int | None = None) -> Proposal:
    """Drafts G tokens (the first `steps` when given) after each anchor at row ctx_len (= p): greedy at
    temperature 0, else sampled from softmax(filter_logits(logits_k, T, top_k, top_p)) with fold_in(key, k);
    slot k+1 reads the token drafted at slot k.

    streams_BND: the target streams at row p−1 (any value when p = 0: they are replaced by zeros). The cache must
    hold rows 0..p−1 (`extend`), row p−1 being (streams_BND, anchor).
    """
    B, N, D = streams_BND.shape
    if (N, D) != (self.hc_mult, self.hidden_size) or anchor_B.shape != (B,) or ctx_len_B.shape != (B,):
      raise ValueError(f"propose: streams_BND {streams_BND.shape}, anchor_B {anchor_B.shape}, ctx_len_B "
                       f"{ctx_len_B.shape}; expected [B, {self.hc_mult}, {self.hidden_size}], [B], [B].")
    if cache.keys_BSK.shape[0] != B:
      raise ValueError(f"propose: the cache holds {cache.keys_BSK.shape[0]} sequences, the batch has {B}.")
    if temperature > 0 and key is None:
      raise ValueError("propose: sampling at temperature > 0 needs a PRNG key.")
    ctx_len_BA = ctx_len_B.astype(jnp.int32)[:, None]
    S = cache.length
    positions_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
    ctx = _window(cache.keys_BSK, positions_BS, ctx_len_BA, jnp.zeros_like(ctx_len_BA), self.mtp.block.attn.window)
    streams_BAND = jnp.where((ctx_len_BA >= 1)[..., None, None], streams_BND[:, None], 0)
    tokens = []

    def draft(k, logits_BAV):
      tokens.append(draw(logits_BAV, None if key is None else jax.random.fold_in(key, k), temperature, top_k, top_p))
      return tokens[-1]

    logits_BAGV = self._chain(frozen, streams_BAND, anchor_B.astype(jnp.int32)[:, None], ctx_len_BA - 1, ctx, draft,
                              steps)
    return Proposal(jnp.stack(tokens, axis=-1)[:, 0], logits_BAGV[:, 0])


def jit_mtp_propose(drafter: MTPDrafter, temperature: float = 0.0):
  """A jitted `(cache, frozen, streams_BND, anchor_B, ctx_len_B, key=None) -> Proposal` over the drafter's
  current state (split once, merged inside the trace: plain `jax.jit`, not `nnx.jit`)."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, cache, frozen, streams_BND, anchor_B, ctx_len_B, key):
    d = nnx.merge(graphdef, state)
    return d.propose(cache, frozen, streams_BND, anchor_B, ctx_len_B, temperature=temperature, key=key)

  return lambda cache, frozen, streams_BND, anchor_B, ctx_len_B, key=None: run(
      state, cache, frozen, streams_BND, anchor_B, ctx_len_B, key)


def jit_mtp_extend(drafter: MTPDrafter):
  """A jitted `(cache, frozen, streams_BTND, next_ids_BT, start_B) -> MTPCache` (see `MTPDrafter.extend`)."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, cache, frozen, streams_BTND, next_ids_BT, start_B):
    return nnx.merge(graphdef, state).extend(cache, frozen, streams_BTND, next_ids_BT, start_B)

  return lambda cache, frozen, streams_BTND, next_ids_BT, start_B: run(state, cache, frozen, streams_BTND,
                                                                       next_ids_BT, start_B)
