"""The DSpark drafter (DFlash is its config without heads, see dsv4.drafters.config).

One round drafts a block of G = γ slots: the anchor (the last committed token, at RoPE position p) and γ−1
learned mask embeddings at p+1..p+γ−1; slot k predicts the token at p+k+1, so every slot predicts. Shapes:
B sequences, A blocks per sequence, G slots, S context entries, D width, V vocabulary, L taps.

  ctx      = RMSNorm(fc(concat_L taps))          target taps [B, S, L, D] → [B, S, D], computed once
  K/V_ctx  = per layer Wk/Wv of ctx              `context_kv`, cacheable (dsv4.drafters.context.ContextKV)
  h        = layers([embed(anchor); masks])      block attends bidirectionally to itself and to context
                                                 entries ctx_start ≤ s < ctx_len (ctx_len = p: c < p_b)
  logits_k = head(norm(h_k)) + bias_k(x_{k−1})   frozen target head; the sequential head's bias (if any)
  conf_k   = σ(w·[norm(h_k); W1 x_{k−1}] + b)    optional confidence head

Training (`block_logits`) runs many blocks at once with teacher-forced previous tokens: the bias of slot k
reads the data token x_{k−1}. Inference (`propose`) runs the backbone once — the backbone never sees
x_{k−1}, only the anchor — then walks the slots in order, because slot k's bias reads the token just drafted
at slot k−1.

With v4 layers, `train_logits_and_experts` also returns the expert ids each layer's MoE routed every slot to:
the trainer counts them for the aux-loss-free routing-bias update (dsv4.training.distill). The ids are plain
outputs, not sown state, so inference (`propose`, `jit_propose`) computes nothing more and keeps no state.

The target's embedding and LM head come in as a `FrozenTarget` (stop-gradient arrays); the drafter owns
neither. It owns and trains one mask embedding per mask slot (DeepSpec instead reuses a spare row of the
frozen target embedding for every mask slot, which is then never learned; a V4 vocabulary need not have one).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.drafters.config import DrafterConfig
from dsv4.drafters.context import ContextKV, FrozenTarget
from dsv4.drafters.features import Blocks, TargetFeatures
from dsv4.drafters.heads import ConfidenceHead, SequentialHead
from dsv4.drafters.layers import DenseLayer
from dsv4.drafters.v4_layer import V4Layer, from_streams, stream_head, to_streams
from dsv4.model.config import ModelConfig
from dsv4.model.layers import DTYPES, KeySeq, Linear, RMSNorm, param
from dsv4.sampling import draw


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Proposal:
  tokens_BG: jax.Array                 # int32 drafts x_0..x_{G−1}
  logits_BGV: jax.Array                # float32, sequential-head corrected: q = softmax(logits / T) for verification
  confidence_BG: jax.Array | None = None  # σ(conf logit) from the drafted previous tokens; None without the head


def teacher_forced_prev(anchor_BA, labels_BAG):
  """[anchor, x_0, .., x_{G−2}]: the previous token of every slot, from the block's data tokens."""
  return jnp.concatenate([anchor_BA[..., None], labels_BAG[..., :-1]], axis=-1).astype(jnp.int32)


class DSpark(nnx.Module):

  def __init__(self, cfg: DrafterConfig, target_cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg.check_against_target(target_cfg)
    self.config = cfg
    dtype, param_dtype = DTYPES[cfg.dtype], DTYPES[cfg.param_dtype]
    rngs = KeySeq(rngs.params())
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D, G = cfg.hidden_size, cfg.block_size
    self.fc = Linear(cfg.num_taps * D, D, ("mlp", "embed"), **kw)
    self.ctx_norm = RMSNorm(D, cfg.rms_norm_eps)
    self.mask_embed = param(rngs, (G - 1, D), (None, "embed"), param_dtype) if G > 1 else None
    if cfg.layer_type == "v4":  # mHC streams through the layers, collapsed by a HyperHead (as the target)
      self.layers = nnx.List([V4Layer(cfg, target_cfg, **kw) for _ in range(cfg.num_layers)])
      self.hc_head = stream_head(cfg, target_cfg, rngs=rngs)
    else:
      self.layers = nnx.List([DenseLayer(cfg, **kw) for _ in range(cfg.num_layers)])
      self.hc_head = None
    self.norm = RMSNorm(D, cfg.rms_norm_eps)
    self.seq_head = (SequentialHead(cfg.markov, target_cfg.vocab_size, cfg.markov_rank, D, **kw)
                     if cfg.markov != "none" else None)
    conf_in = D + (cfg.markov_rank if self.seq_head is not None else 0)
    self.conf_head = ConfidenceHead(conf_in, **kw) if cfg.confidence_head else None
    self.dtype = dtype

  # --- context ------------------------------------------------------------------------------------
  def context_features(self, taps_BSLD):
    """ctx = RMSNorm(fc(concat of the L taps)), [B, S, D]."""
    B, S, L, D = taps_BSLD.shape
    if L != self.config.num_taps:
      raise ValueError(f"taps have {L} layers but drafter.target_layer_ids has {self.config.num_taps}; run the "
                       f"target with tap_layers={self.config.target_layer_ids}.")
    return self.ctx_norm(self.fc(taps_BSLD.reshape(B, S, L * D)))

  def context_kv(self, taps_BSLD, positions_BS=None) -> ContextKV:
    """Every layer's context keys/values; entry s sits at RoPE position positions_BS[s] (default s)."""
    ctx = self.context_features(taps_BSLD)
    if positions_BS is None:
      positions_BS = jnp.broadcast_to(jnp.arange(ctx.shape[1], dtype=jnp.int32), ctx.shape[:2])
    ks, vs = zip(*(layer.context_kv(ctx, positions_BS) for layer in self.layers), strict=True)
    return ContextKV(jnp.stack(ks), jnp.stack(vs))

  # --- backbone -----------------------------------------------------------------------------------
  def hidden(self, ctx_kv: ContextKV, frozen: FrozenTarget, anchor_ids_BA, ctx_len_BA, *, ctx_start_BA=None,
             anchor_pos_BA=None):
    """Final-normed block hidden states [B, A, G, D].

    Block (b, a) sees context entries ctx_start ≤ s < ctx_len (default start 0; v4 layers tighten the start to
    ctx_len − sliding_window when that is later, see dsv4.drafters.v4_layer) and sits at RoPE positions
    anchor_pos..anchor_pos+G−1 (default anchor_pos = ctx_len: the anchor shares its position with its own,
    invisible, context entry).
    """
    return self._backbone(ctx_kv, frozen, anchor_ids_BA, ctx_len_BA, ctx_start_BA, anchor_pos_BA)[0]

  def _backbone(self, ctx_kv: ContextKV, frozen: FrozenTarget, anchor_ids_BA, ctx_len_BA, ctx_start_BA,
                anchor_pos_BA):
    """(`hidden`, the expert ids every v4 layer's MoE routed each slot to: a tuple of [B, A, G, k] int32 aligned
    with `routed_moes()`, empty for dense layers). Callers that drop the ids leave XLA nothing extra to run."""
    G = self.config.block_size
    ctx_len_BA = ctx_len_BA.astype(jnp.int32)
    ctx_start_BA = jnp.zeros_like(ctx_len_BA) if ctx_start_BA is None else ctx_start_BA.astype(jnp.int32)
    anchor_pos_BA = ctx_len_BA if anchor_pos_BA is None else anchor_pos_BA.astype(jnp.int32)
    h = frozen.embed(anchor_ids_BA).astype(self.dtype)[:, :, None, :]
    if G > 1:
      masks = jnp.broadcast_to(self.mask_embed[...].astype(self.dtype), anchor_ids_BA.shape + self.mask_embed.shape)
      h = jnp.concatenate([h, masks], axis=2)
    pos_BAG = anchor_pos_BA[..., None] + jnp.arange(G, dtype=jnp.int32)
    if self.hc_head is not None:  # v4 layers carry hc_mult residual streams [B, A, G, N, D]
      h = to_streams(h, self.config.hc_mult)
    experts = []
    for n, layer in enumerate(self.layers):
      args = (pos_BAG, ctx_kv.k_LBSJK[n], ctx_kv.v_LBSJK[n], ctx_start_BA, ctx_len_BA)
      if isinstance(layer, V4Layer):
        h, experts_BAGK = layer.forward(h, *args)
        experts.append(experts_BAGK)
      else:
        h = layer(h, *args)
    if self.hc_head is not None:
      h = from_streams(self.hc_head, h)
    return self.norm(h), tuple(experts)

  def routed_moes(self) -> tuple:
    """The MoE of every v4 layer, in layer order (learned routing, each with a balancing bias); () when dense."""
    return tuple(layer.ffn for layer in self.layers if isinstance(layer, V4Layer))

  # --- training: many teacher-forced blocks ---------------------------------------------------------
  def block_logits(self, ctx_kv: ContextKV, frozen: FrozenTarget, prev_ids_BAG, ctx_len_BA, *, ctx_start_BA=None,
                   anchor_pos_BA=None):
    """(logits [B, A, G, V] float32, confidence logits [B, A, G] float32 or None).

    prev_ids_BAG[..., k] is x_{k−1}, the token before slot k: [..., 0] is the anchor (also the block's first
    input), [..., k ≥ 1] feed only the sequential and confidence heads (see `teacher_forced_prev`).
    """
    return self._block_outputs(ctx_kv, frozen, prev_ids_BAG, ctx_len_BA, ctx_start_BA, anchor_pos_BA)[:2]

  def _block_outputs(self, ctx_kv: ContextKV, frozen: FrozenTarget, prev_ids_BAG, ctx_len_BA, ctx_start_BA,
                     anchor_pos_BA):
    """(logits, confidence logits, routed expert ids): `block_logits` plus `_backbone`'s ids."""
    G = self.config.block_size
    if prev_ids_BAG.shape[-1] != G:
      raise ValueError(f"prev_ids has {prev_ids_BAG.shape[-1]} slots but drafter.block_size is {G}.")
    h, experts = self._backbone(ctx_kv, frozen, prev_ids_BAG[..., 0], ctx_len_BA, ctx_start_BA, anchor_pos_BA)
    logits = frozen.head(h)
    prev_embed = None
    if self.seq_head is not None:
      logits = logits + self.seq_head.block_bias(prev_ids_BAG, h)
      prev_embed = self.seq_head.prev_embed(prev_ids_BAG)
    conf = self.conf_head(h, prev_embed) if self.conf_head is not None else None
    return logits, conf, experts

  __call__ = block_logits

  feature_names = ("taps",)

  def train_logits(self, feats: TargetFeatures, blocks: Blocks, frozen: FrozenTarget):
    """The training interface of every drafter (dsv4.drafters.features): context K/V from the row's taps at
    their document positions, then every block teacher-forced, seeing [ctx_start, anchor) of its row."""
    return self.train_logits_and_experts(feats, blocks, frozen)[:2]

  def train_logits_and_experts(self, feats: TargetFeatures, blocks: Blocks, frozen: FrozenTarget):
    """(`train_logits`'s logits and confidence, the expert ids each of `routed_moes()` picked for every slot of
    every block, a tuple of [B, A, G, k] int32): what the trainer's routing-bias update counts
    (dsv4.training.distill). Padding blocks are routed too; the trainer leaves them out of the count."""
    ctx_kv = self.context_kv(feats.taps_BTLD, feats.positions_BT)
    return self._block_outputs(ctx_kv, frozen, blocks.prev_BAG, blocks.anchor_BA, blocks.ctx_start_BA,
                               blocks.anchor_pos_BA)

  # --- inference: one block per sequence, slot by slot ----------------------------------------------
  def propose(self, ctx_kv: ContextKV, frozen: FrozenTarget, anchor_B, ctx_len_B, *, anchor_pos_B=None,
              temperature: float = 0.0, key=None, top_k: int = 0, top_p: float = 1.0,
              steps: int | None = None) -> Proposal:
    """Drafts G tokens after each anchor: greedy (argmax) at temperature 0, else sampled from
    softmax(filter_logits(logits_k, T, top_k, top_p)) with fold_in(key, k) (dsv4.sampling.draw). The
    backbone runs once over all G slots; the slot steps then apply the sequential head with the token drafted at
    the previous slot (the anchor for slot 0). `steps` < G drafts only the first `steps` slots (the block the
    backbone sees is still the trained one)."""
    if temperature > 0 and key is None:
      raise ValueError("propose: sampling at temperature > 0 needs a PRNG key.")
    anchor_pos_BA = None if anchor_pos_B is None else anchor_pos_B[:, None]
    h_BGD = self.hidden(ctx_kv, frozen, anchor_B[:, None], ctx_len_B[:, None], anchor_pos_BA=anchor_pos_BA)[:, 0]
    base_BGV = frozen.head(h_BGD)
    state = self.seq_head.init_state(anchor_B.shape) if self.seq_head is not None else None
    prev_B, tokens, logits = anchor_B.astype(jnp.int32), [], []
    for k in range(self.config.block_size if steps is None else steps):
      logits_BV = base_BGV[:, k]
      if self.seq_head is not None:
        bias_BV, state = self.seq_head.step(state, prev_B, h_BGD[:, k])
        logits_BV = logits_BV + bias_BV
      prev_B = draw(logits_BV, None if key is None else jax.random.fold_in(key, k), temperature, top_k, top_p)
      tokens.append(prev_B)
      logits.append(logits_BV)
    tokens_BG = jnp.stack(tokens, axis=1)
    confidence = None
    if self.conf_head is not None:
      prev_BG = teacher_forced_prev(anchor_B, tokens_BG)
      prev_embed = self.seq_head.prev_embed(prev_BG) if self.seq_head is not None else None
      confidence = jax.nn.sigmoid(self.conf_head(h_BGD[:, :tokens_BG.shape[1]], prev_embed))
    return Proposal(tokens_BG, jnp.stack(logits, axis=1), confidence)


def jit_propose(drafter: DSpark, temperature: float = 0.0):
  """A jitted `(ctx_kv, frozen, anchor_B, ctx_len_B, key=None) -> Proposal` over the drafter's current state
  (split once, merged inside the trace: plain `jax.jit`, not `nnx.jit`)."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, ctx_kv, frozen, anchor_B, ctx_len_B, key):
    return nnx.merge(graphdef, state).propose(ctx_kv, frozen, anchor_B, ctx_len_B, temperature=temperature, key=key)

  return lambda ctx_kv, frozen, anchor_B, ctx_len_B, key=None: run(state, ctx_kv, frozen, anchor_B, ctx_len_B, key)


def jit_block_logits(drafter: DSpark):
  """A jitted `(ctx_kv, frozen, prev_ids_BAG, ctx_len_BA) -> (logits, conf_logits)` (split once)."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, ctx_kv, frozen, prev_ids_BAG, ctx_len_BA):
    return nnx.merge(graphdef, state).block_logits(ctx_kv, frozen, prev_ids_BAG, ctx_len_BA)

  return lambda ctx_kv, frozen, prev_ids_BAG, ctx_len_BA: run(state, ctx_kv, frozen, prev_ids_BAG, ctx_len_BA)
