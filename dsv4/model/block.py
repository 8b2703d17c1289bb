"""One V4 decoder block: mHC around attention and around the MoE, each with a pre-norm."""

from __future__ import annotations

from flax import nnx

from dsv4.model.attention import Attention
from dsv4.model.config import ModelConfig
from dsv4.model.hyper import HyperConnection
from dsv4.model.layers import RMSNorm
from dsv4.model.moe import MoE


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, ratio: int, is_hash: bool, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    hc = (cfg.hidden_size, cfg.hc_mult, cfg.hc_sinkhorn_iters, cfg.hc_eps, cfg.rms_norm_eps)
    self.attn_hc = HyperConnection(*hc, rngs=rngs)
    self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.attn = Attention(cfg, ratio, **kw)
    self.ffn_hc = HyperConnection(*hc, rngs=rngs)
    self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.ffn = MoE(cfg, is_hash, **kw)

  def __call__(self, streams_BTND, ids_BT, moe_impl: str | None = None, attention=None):
    """Returns (streams [B, T, N, D], routed expert ids [B, T, k]).

    `attention` (x_BTD -> out_BTD) replaces the whole-sequence `self.attn`; the decode path passes one that
    reads and updates its cache.
    """
    pre, post, comb = self.attn_hc.weights(streams_BTND)
    x = (attention or self.attn)(self.attn_norm(self.attn_hc.collapse(streams_BTND, pre)))
    streams_BTND = HyperConnection.expand(streams_BTND, x, post, comb)
    pre, post, comb = self.ffn_hc.weights(streams_BTND)
    y, experts_BTK = self.ffn(self.ffn_norm(self.ffn_hc.collapse(streams_BTND, pre)), ids_BT, impl=moe_impl)
    return HyperConnection.expand(streams_BTND, y, post, comb), experts_BTK
