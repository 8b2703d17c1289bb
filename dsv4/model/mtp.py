"""Multi-token prediction (MTP) module, as V4 ships one (`mtp.0.*`).

At position t it combines the main model's residual streams h_t [N, D] with the embedding of the *next*
token x_{t+1}, runs one V4 block, and predicts x_{t+2} through its own stream collapse and norm and the
target's shared LM head:
  streams = e_proj(enorm(embed(x_{t+1}))) ⊕_streams h_proj(hnorm(h_t));  logits = head(norm(hc_head(block(·))))
The embedding and head are the target's (passed in). MTP-k feeds the returned streams back in.
Transformers does not implement MTP; this follows the published description (embedding and hidden each
normalised and projected, added per stream).
"""

from __future__ import annotations

import functools

from flax import nnx

from dsv4.model.block import Block
from dsv4.model.config import ModelConfig
from dsv4.model.hyper import HyperHead
from dsv4.model.layers import Linear, RMSNorm


class MTPModule(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D = cfg.hidden_size
    self.enorm = RMSNorm(D, cfg.rms_norm_eps)
    self.hnorm = RMSNorm(D, cfg.rms_norm_eps)
    self.e_proj = Linear(D, D, ("embed", "mlp"), **kw)
    self.h_proj = Linear(D, D, ("embed", "mlp"), **kw)
    self.block = Block(cfg, 0, False, **kw)
    self.hc_head = HyperHead(D, cfg.hc_mult, cfg.hc_eps, cfg.rms_norm_eps, rngs=rngs)
    self.norm = RMSNorm(D, cfg.rms_norm_eps)

  def __call__(self, streams_BTND, next_embed_BTD, moe_impl=None, positions_BT=None, segment_ids_BT=None):
    """Returns (final-normed hidden [B, T, D], new streams [B, T, N, D])."""
    e = self.e_proj(self.enorm(next_embed_BTD))
    x = e[:, :, None, :] + self.h_proj(self.hnorm(streams_BTND))
    attention = functools.partial(self.block.attn, positions_BT=positions_BT, segment_ids_BT=segment_ids_BT)
    x, _ = self.block(x.astype(streams_BTND.dtype), None, moe_impl, attention)
    return self.norm(self.hc_head(x)), x


