"""The EAGLE-3 drafter baseline (SpecForge's `LlamaForCausalLMEagle3`, DeepSpec's Eagle3 baseline).

One causal decoder layer, run once per drafted token (chain drafting). Shapes: B rows, T tokens per row, A blocks
per row, G = block_size drafting steps, L taps, D width, H query heads, J key/value heads, K head dim, V vocabulary.

Alignment, in row indices of a packed row: p is the anchor (the last committed token), c = ctx_start the row where
p's document starts, pos[t] the position of row t inside its document.

  f_t      = fc(concat_L taps[t−1])                 the target's features one row back, [D]; f_c = 0 (see below)
  u(x, h)  = [RMSNorm_e(embed(x)) ; RMSNorm_h(h)]   the layer's attention input, [2D]
  entry t  = K/V of u(tokens[t], f_t) at pos[t]     the step-0 cache of row t (`context_kv`)
  slot 0:  h_0 = layer(h = f_p, x = tokens[p], at pos[p])        predicts tokens[p+1]
  slot k:  h_k = layer(h = h_{k−1}, x = x_k, at pos[p]+k)        predicts tokens[p+k+1]
           x_k = tokens[p+k] in training (teacher-forced); the token drafted at slot k−1 at inference
  logits_k = head(RMSNorm_f(h_k))                   the target's frozen full-vocabulary head

  layer(h, x):  u = u(x, h);  q, k, v = rope(Wq u), rope(Wk u), Wv u     from 2D (no q/k norm: a Llama layer)
                h' = h + Wo·attn(q, visible keys);  h' += SwiGLU(RMSNorm_post(h'))
                the residual stream is the D-wide h, not u; h_k (before the final norm) feeds slot k+1 (TTT)

Slot k of the block at p sees context entries c ≤ t < p (causal, its own document only) and its own chain's
keys of slots 0..k (the TTT cross-step cache: each block sees only its own chain, SpecForge's diagonal mask).
Slot 0's own key is entry p itself, so step 0 is exactly the causal layer at row p. RoPE rotates the whole head
at document positions; scale K^-½; GQA with query head i reading K/V head i // (H/J).

The first token of a document has no target features at the row before it (that row belongs to another document
or does not exist): its taps are taken as zeros, so f_c = fc(0) = 0 and RMSNorm_h(0) = 0 (the ε keeps the norm
and its gradient finite). Inference must do the same for a document's first context entry, and when the anchor is
itself the first token (`propose` with zero taps).

Training (`train_logits`) computes the K/V of every row's step-0 entry once (projections only, O(T)), then runs
the G steps over all A anchors at once: each step scores its A queries against the row's T entry keys with
per-query visible ranges [c, p) (`block_attention`: no [T, T] mask, A·T scores per step) and against the ≤ G keys
of its own chain. SpecForge instead makes every row an anchor (T causal queries per step). Slots whose chain runs
past the anchor's document read tokens of the next document; their labels are never valid there
(`Blocks.valid_BAG`), so they are not supervised.

Inference (`propose`): a `ContextKV` with N = 1 layer holds the entries of one document from buffer row 0 (rows
< ctx_len visible), the caller passes taps[p−1] for f_p, and G layer calls draft G tokens: greedy at temperature
0, sampled from softmax(logits/T) otherwise. There is no stop at EOS inside a proposal (the speculative loop
handles EOS). Training loss: `eagle3_config` weights soft-label CE against the target with 0.8^k per slot,
through `dsv4.drafters.losses.dspark_losses` (a Σw-weighted mean, where SpecForge normalises each step by B·T).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.drafters.attention import block_attention
from dsv4.drafters.config import DrafterConfig
from dsv4.drafters.context import ContextKV, FrozenTarget
from dsv4.drafters.dspark import Proposal
from dsv4.drafters.features import Blocks, TargetFeatures
from dsv4.errors import ConfigError
from dsv4.model.config import ModelConfig
from dsv4.model.layers import DTYPES, KeySeq, Linear, RMSNorm, SwiGLU
from dsv4.model.rope import apply_rope, inv_frequencies
from dsv4.sampling import draw


def previous_taps(taps_BTLD, positions_BT, segment_ids_BT):
  """taps[t−1] at row t, zeros where row t starts its document (position 0, a new segment, or row 0)."""
  prev = jnp.concatenate([jnp.zeros_like(taps_BTLD[:, :1]), taps_BTLD[:, :-1]], axis=1)
  same_doc = jnp.concatenate([jnp.zeros_like(segment_ids_BT[:, :1], dtype=bool),
                              segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]], axis=1) & (positions_BT > 0)
  return jnp.where(same_doc[..., None, None], prev, jnp.zeros((), taps_BTLD.dtype))


class Eagle3Layer(nnx.Module):
  """The one decoder layer: attention input [RMSNorm_e(embed x) ; RMSNorm_h(h)] (2D), residual stream h (D)."""

  def __init__(self, cfg: DrafterConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D, H, J, K = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    self.num_heads, self.kv_heads, self.head_dim = H, J, K
    self.inv_freq = tuple(float(f) for f in inv_frequencies(K, cfg.rope_theta))
    self.embed_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.hidden_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.wq = Linear(2 * D, H * K, ("embed", "heads"), **kw)
    self.wk = Linear(2 * D, J * K, ("embed", "kv"), **kw)
    self.wv = Linear(2 * D, J * K, ("embed", "kv"), **kw)
    self.wo = Linear(H * K, D, ("heads", "embed"), **kw)
    self.post_norm = RMSNorm(D, cfg.rms_norm_eps)
    limit = math.inf if cfg.swiglu_limit is None else cfg.swiglu_limit
    self.mlp = SwiGLU(D, cfg.intermediate_size, limit, **kw)

  def inputs(self, emb_XD, h_XD):
    """u = [RMSNorm_e(embed) ; RMSNorm_h(h)], [..., 2D]."""
    return jnp.concatenate([self.embed_norm(emb_XD), self.hidden_norm(h_XD).astype(emb_XD.dtype)], axis=-1)

  def kv(self, u_XTE, pos_XT):
    """Keys (rotated at pos) and values of attention inputs u, each [..., T, J, K]."""
    shape = u_XTE.shape[:-1] + (self.kv_heads, self.head_dim)
    return apply_rope(self.wk(u_XTE).reshape(shape), pos_XT, self.inv_freq), self.wv(u_XTE).reshape(shape)

  def query(self, u_XTE, pos_XT):
    shape = u_XTE.shape[:-1] + (self.num_heads, self.head_dim)
    return apply_rope(self.wq(u_XTE).reshape(shape), pos_XT, self.inv_freq)

  def finish(self, h_XD, attn_XHK):
    """h + Wo·attn, then the SwiGLU MLP on the post-attention norm (both residual)."""
    h_XD = h_XD + self.wo(attn_XHK.reshape(attn_XHK.shape[:-2] + (-1,))).astype(h_XD.dtype)
    return h_XD + self.mlp(self.post_norm(h_XD)).astype(h_XD.dtype)


class Eagle3(nnx.Module):

  feature_names = ("taps",)

  def __init__(self, cfg: DrafterConfig, target_cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "eagle3":
      raise ConfigError(f"drafter.kind: is {cfg.kind!r} but Eagle3 needs kind='eagle3'; build the config with "
                        "eagle3_config().")
    cfg.check_against_target(target_cfg)
    if cfg.layer_type != "dense":
      raise NotImplementedError(f"drafter.layer_type={cfg.layer_type!r}: EAGLE-3 has one dense Llama-style layer; "
                                "use layer_type='dense'.")
    self.config = cfg
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    rngs = KeySeq(rngs.params())
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D = cfg.hidden_size
    self.fc = Linear(cfg.num_taps * D, D, ("mlp", "embed"), **kw)
    self.layer = Eagle3Layer(cfg, **kw)
    self.norm = RMSNorm(D, cfg.rms_norm_eps)
    self.dtype = dtype

  # --- features and the step-0 cache -------------------------------------------------------------------
  def _check_taps(self, taps_XLD, name: str):
    L, D = taps_XLD.shape[-2:]
    if L != self.config.num_taps or D != self.config.hidden_size:
      raise ValueError(f"{name} has {L} taps of width {D} but the drafter expects {self.config.num_taps} "
                       f"(target_layer_ids={self.config.target_layer_ids}) of width {self.config.hidden_size}; run "
                       f"the target with tap_layers={self.config.target_layer_ids}.")

  def features(self, taps_XLD):
    """f = fc(concat of the L taps), [..., D] (zero taps give f = 0)."""
    return self.fc(taps_XLD.reshape(taps_XLD.shape[:-2] + (-1,)))

  def _entries_kv(self, frozen: FrozenTarget, tokens_BS, f_BSD, positions_BS):
    u = self.layer.inputs(frozen.embed(tokens_BS).astype(self.dtype), f_BSD)
    return self.layer.kv(u, positions_BS)

  def context_kv(self, frozen: FrozenTarget, tokens_BS, prev_taps_BSLD, positions_BS) -> ContextKV:
    """Step-0 entries [1, B, S, J, K]: entry s is u(tokens[s], fc(prev_taps[s])) at positions[s], where
    prev_taps[s] = taps of the row before s in its document (zeros for its first token; `previous_taps`)."""
    self._check_taps(prev_taps_BSLD, "prev_taps")
    k, v = self._entries_kv(frozen, tokens_BS, self.features(prev_taps_BSLD), positions_BS)
    return ContextKV(k[None], v[None])

  # --- the chain ---------------------------------------------------------------------------------------
  def _step(self, h_BAD, emb_BAD, pos_BA, chain, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA):
    """One slot for every block: appends its K/V to `chain` (lists) and returns the layer output h [B, A, D]."""
    u = self.layer.inputs(emb_BAD, h_BAD)
    q = self.layer.query(u, pos_BA)
    k, v = self.layer.kv(u, pos_BA)
    chain[0].append(k)
    chain[1].append(v)
    o = block_attention(q[:, :, None], jnp.stack(chain[0], axis=2), jnp.stack(chain[1], axis=2), k_ctx_BSJK,
                        v_ctx_BSJK, ctx_start_BA, ctx_len_BA, self.layer.head_dim ** -0.5)
    return self.layer.finish(h_BAD, o[:, :, 0])

  def train_logits(self, feats: TargetFeatures, blocks: Blocks, frozen: FrozenTarget):
    """(logits [B, A, G, V] float32, None): every block's G slots teacher-forced (x_k = blocks.prev_BAG[..., k])
    over the step-0 entries of its document before the anchor (see the module docstring)."""
    G = self.config.block_size
    if feats.taps_BTLD is None:
      raise ValueError("Eagle3.train_logits needs feats.taps_BTLD; run the target with "
                       f"tap_layers={self.config.target_layer_ids}.")
    self._check_taps(feats.taps_BTLD, "feats.taps_BTLD")
    if blocks.prev_BAG.shape[-1] != G:
      raise ValueError(f"blocks have {blocks.prev_BAG.shape[-1]} slots but drafter.block_size is {G}; build them "
                       f"with make_blocks(..., block_size={G}).")
    f_BTD = self.features(previous_taps(feats.taps_BTLD, feats.positions_BT, feats.segment_ids_BT))
    k_ctx, v_ctx = self._entries_kv(frozen, feats.tokens_BT, f_BTD, feats.positions_BT)
    anchor_BA = blocks.anchor_BA.astype(jnp.int32)
    h = jnp.take_along_axis(f_BTD, anchor_BA[..., None], axis=1)  # f_p
    emb_BAGD = frozen.embed(blocks.prev_BAG).astype(self.dtype)
    ctx_start_BA = blocks.ctx_start_BA.astype(jnp.int32)
    chain, logits = ([], []), []
    for k in range(G):
      h = self._step(h, emb_BAGD[:, :, k], blocks.anchor_pos_BA + k, chain, k_ctx, v_ctx, ctx_start_BA, anchor_BA)
      logits.append(frozen.head(self.norm(h)))
    return jnp.stack(logits, axis=2), None

  # --- inference: chain drafting --------------------------------------------------------------------------
  def propose(self, ctx_kv: ContextKV, frozen: FrozenTarget, prev_taps_BLD, anchor_B, ctx_len_B, *,
              ctx_start_B=None, anchor_pos_B=None, temperature: float = 0.0, key=None, top_k: int = 0,
              top_p: float = 1.0, steps: int | None = None) -> Proposal:
    """Drafts G tokens (the first `steps` when given) after each anchor, one layer call each: greedy (argmax) at
    temperature 0, else sampled from softmax(filter_logits(logits_k, T, top_k, top_p)) with fold_in(key, k).
    ctx_kv holds the step-0 entries (`context_kv`); the block sees entries ctx_start ≤ s < ctx_len (default
    start 0) and slot k sits at anchor_pos + k (default anchor_pos = ctx_len − ctx_start). prev_taps_BLD are the
    taps of the row before the anchor (zeros when the anchor is its document's first token)."""
    if temperature > 0 and key is None:
      raise ValueError("propose: sampling at temperature > 0 needs a PRNG key.")
    if ctx_kv.k_LBSJK.shape[0] != 1:
      raise ValueError(f"ctx_kv has {ctx_kv.k_LBSJK.shape[0]} layers; an EAGLE-3 cache has 1 (Eagle3.context_kv).")
    self._check_taps(prev_taps_BLD, "prev_taps_BLD")
    ctx_len_BA = ctx_len_B.astype(jnp.int32)[:, None]
    ctx_start_BA = jnp.zeros_like(ctx_len_BA) if ctx_start_B is None else ctx_start_B.astype(jnp.int32)[:, None]
    pos_BA = ctx_len_BA - ctx_start_BA if anchor_pos_B is None else anchor_pos_B.astype(jnp.int32)[:, None]
    h = self.features(prev_taps_BLD)[:, None]
    tok_B = anchor_B.astype(jnp.int32)
    chain, tokens, logits = ([], []), [], []
    for k in range(self.config.block_size if steps is None else steps):
      emb = frozen.embed(tok_B[:, None]).astype(self.dtype)
      h = self._step(h, emb, pos_BA + k, chain, ctx_kv.k_LBSJK[0], ctx_kv.v_LBSJK[0], ctx_start_BA, ctx_len_BA)
      logits_BV = frozen.head(self.norm(h))[:, 0]
      tok_B = draw(logits_BV, None if key is None else jax.random.fold_in(key, k), temperature, top_k, top_p)
      tokens.append(tok_B)
      logits.append(logits_BV)
    return Proposal(jnp.stack(tokens, axis=1), jnp.stack(logits, axis=1), None)


def jit_eagle3_propose(drafter: Eagle3, temperature: float = 0.0):
  """A jitted `(ctx_kv, frozen, prev_taps_BLD, anchor_B, ctx_len_B, key=None) -> Proposal` over the drafter's
  current state (split once, merged inside the trace: plain `jax.jit`, not `nnx.jit`); the cache holds one
  document per sequence from buffer row 0, so the anchor sits at position ctx_len."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, ctx_kv, frozen, prev_taps_BLD, anchor_B, ctx_len_B, key):
    return nnx.merge(graphdef, state).propose(ctx_kv, frozen, prev_taps_BLD, anchor_B, ctx_len_B,
                                              temperature=temperature, key=key)

  return lambda ctx_kv, frozen, prev_taps_BLD, anchor_B, ctx_len_B, key=None: run(
      state, ctx_kv, frozen, prev_taps_BLD, anchor_B, ctx_len_B, key)
