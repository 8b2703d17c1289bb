"""The DeepSeek-V4 target: embedding → N streams → V4 blocks → stream collapse → norm → untied head.

`model(input_ids)` gives float32 logits [B, S, V]. `model.forward(...)` also returns what drafters consume:
the hidden state after chosen layers (`taps`, the mean over the mHC streams) and the final-normed hidden
state; and the MTP modules' logits on request.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model import decode
from dsv4.model.block import Block
from dsv4.model.config import ModelConfig
from dsv4.model.hyper import HyperHead, stream_mean
from dsv4.model.layers import DTYPES, KeySeq, RMSNorm, param
from dsv4.model.mtp import MTPModule


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TargetOutput:
  logits_BTV: jax.Array                 # float32
  final_hidden_BTD: jax.Array           # after hc_head and the final norm (what the head reads)
  taps_BTLD: jax.Array | None = None    # hidden after each layer in `tap_layers`, mean over streams
  streams_BTND: jax.Array | None = None  # residual streams before the final collapse (MTP input)
  experts_LBTK: jax.Array | None = None  # routed expert ids per layer (load statistics, bias update)
  mtp_logits_KBTV: jax.Array | None = None  # MTP module k at position t predicts token t + 2 + k


class Transformer(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype, param_dtype = DTYPES[config.dtype], DTYPES[config.param_dtype]
    rngs = KeySeq(rngs.params())
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D = config.hidden_size
    self.embed = param(rngs, (config.vocab_size, D), ("vocab", "embed"), param_dtype)
    self.layers = nnx.List([
        Block(config, ratio, is_hash, **kw)
        for ratio, is_hash in zip(config.compress_ratios, config.is_hash_layer, strict=True)
    ])
    self.hc_head = HyperHead(D, config.hc_mult, config.hc_eps, config.rms_norm_eps, rngs=rngs)
    self.norm = RMSNorm(D, config.rms_norm_eps)
    self.lm_head = param(rngs, (D, config.vocab_size), ("embed", "vocab"), param_dtype)
    self.mtp = nnx.List([MTPModule(config, **kw) for _ in range(config.num_nextn_predict_layers)])
    self.dtype = dtype

  def embed_tokens(self, ids_BT):
    return self.embed[...][ids_BT].astype(self.dtype)

  def head(self, hidden_BTD):
    """The shared LM head, float32 logits."""
    return jnp.dot(hidden_BTD.astype(self.dtype), self.lm_head[...].astype(self.dtype)).astype(jnp.float32)

  def forward(self, input_ids_BT, *, tap_layers: tuple[int, ...] = (), with_mtp: bool = False,
              moe_impl: str | None = None, positions_BT=None, segment_ids_BT=None) -> TargetOutput:
    """Packed rows (several documents per row, see `dsv4.data.packing`) pass `positions_BT` and
    `segment_ids_BT`; no token then attends across a document boundary."""
    B, T = input_ids_BT.shape
    streams = jnp.broadcast_to(self.embed_tokens(input_ids_BT)[:, :, None, :],
                               (B, T, self.config.hc_mult, self.config.hidden_size))
    packed = dict(positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
    taps, experts = {}, []
    for i, layer in enumerate(self.layers):
      streams, experts_BTK = layer(streams, input_ids_BT, moe_impl, functools.partial(layer.attn, **packed))
      experts.append(experts_BTK)
      if i in tap_layers:
        taps[i] = stream_mean(streams)
    final_BTD = self.norm(self.hc_head(streams))
    out = TargetOutput(
        logits_BTV=self.head(final_BTD), final_hidden_BTD=final_BTD, streams_BTND=streams,
        taps_BTLD=jnp.stack([taps[i] for i in tap_layers], axis=2) if tap_layers else None,
        experts_LBTK=jnp.stack(experts))
    if with_mtp and len(self.mtp):
      out.mtp_logits_KBTV = self.mtp_logits(streams, input_ids_BT, moe_impl=moe_impl, **packed)
    return out

  def mtp_logits(self, streams_BTND, input_ids_BT, moe_impl=None, positions_BT=None, segment_ids_BT=None):
    """MTP-k chained: module k reads the streams of module k−1 and the token k + 1 steps ahead.

    Returns [K, B, T, V]; positions whose look-ahead token falls past the end see token id 0 (their
    predictions are meaningless and are masked by the losses).
    """
    B, T = input_ids_BT.shape
    out = []
    for k, module in enumerate(self.mtp):
      ahead = jnp.concatenate([input_ids_BT[:, k + 1:], jnp.zeros((B, k + 1), input_ids_BT.dtype)], axis=1)
      hidden, streams_BTND = module(streams_BTND, self.embed_tokens(ahead), moe_impl, positions_BT, segment_ids_BT)
      out.append(self.head(hidden))
    return jnp.stack(out)

  # --- incremental decoding: the target interface the generation loops call (dsv4.model.decode) ----------
  def init_state(self, batch: int, max_len: int):
    """An empty decode state for `batch` sequences of up to `max_len` tokens."""
    return decode.init_state(self.config, batch, max_len)

  def extend(self, state, tokens_BN, n_valid_B=None, tap_layers: tuple[int, ...] = ()):
    """Appends tokens_BN[b, :n_valid_B[b]] to each sequence: (ExtendOutput, new state); see dsv4.model.decode."""
    return decode.extend(self, state, tokens_BN, n_valid_B, tap_layers)

  def __call__(self, input_ids_BT):
    """float32 logits [B, S, V] for int32 token ids [B, S]."""
    return self.forward(input_ids_BT).logits_BTV


def jit_forward(model: Transformer, **forward_kwargs):
  """A jitted `ids -> TargetOutput` over the model's current state (split once, merged inside the trace).

  The hot-path pattern: plain `jax.jit` of a pure function of the state, not `nnx.jit`.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids_BT):
    return nnx.merge(graphdef, state).forward(ids_BT, **forward_kwargs)

  return lambda ids_BT: run(state, ids_BT)
