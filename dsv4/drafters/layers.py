"""A dense DSpark drafter layer (DeepSpec's Qwen3-style layer) with the context injected as keys/values.

On the block stream h [B, A, G, D]:
  x = RMSNorm_in(h);  q = rope(q_norm(Wq x))                              per-head RMSNorm on q and k
  K = [rope(k_norm(Wk ctx)) ; rope(k_norm(Wk x))],  V = [Wv ctx ; Wv x]   context entries first, then the block
  h += Wo · attn(q, K, V);  h += SwiGLU(RMSNorm_post(h))
The context `ctx` is shared by all layers and only meets Wk, Wv and k_norm here, so `context_kv` is exact
to compute once per context token and cache. RoPE rotates the whole head (interleaved pairs), scale hd^-½.
"""

from __future__ import annotations

import math

from flax import nnx

from dsv4.drafters.attention import block_attention
from dsv4.drafters.config import DrafterConfig
from dsv4.model.layers import Linear, RMSNorm, SwiGLU
from dsv4.model.rope import apply_rope, inv_frequencies


def add_gqa_projections(module: nnx.Module, cfg: DrafterConfig, kw: dict) -> None:
  """The grouped-query attention weights every drafter layer kind shares, set on `module` (wq, wk, wv, wo and the
  per-head q/k RMSNorms) with its head counts and RoPE frequencies."""
  D, H, J, K = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
  module.num_heads, module.kv_heads, module.head_dim = H, J, K
  module.inv_freq = tuple(float(f) for f in inv_frequencies(K, cfg.rope_theta))
  module.wq = Linear(D, H * K, ("embed", "heads"), **kw)
  module.wk = Linear(D, J * K, ("embed", "kv"), **kw)
  module.wv = Linear(D, J * K, ("embed", "kv"), **kw)
  module.wo = Linear(H * K, D, ("heads", "embed"), **kw)
  module.q_norm = RMSNorm(K, cfg.rms_norm_eps)
  module.k_norm = RMSNorm(K, cfg.rms_norm_eps)


class DenseLayer(nnx.Module):

  def __init__(self, cfg: DrafterConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D = cfg.hidden_size
    self.in_norm = RMSNorm(D, cfg.rms_norm_eps)
    add_gqa_projections(self, cfg, kw)
    self.post_norm = RMSNorm(D, cfg.rms_norm_eps)
    limit = math.inf if cfg.swiglu_limit is None else cfg.swiglu_limit
    self.mlp = SwiGLU(D, cfg.intermediate_size, limit, **kw)

  def _kv(self, x_XTD, pos_XT):
    shape = x_XTD.shape[:-1] + (self.kv_heads, self.head_dim)
    k = apply_rope(self.k_norm(self.wk(x_XTD).reshape(shape)), pos_XT, self.inv_freq)
    return k, self.wv(x_XTD).reshape(shape)

  def context_kv(self, ctx_BSD, pos_BS):
    """Keys and values of context entries, each [B, S, J, K]."""
    return self._kv(ctx_BSD, pos_BS)

  def __call__(self, h_BAGD, pos_BAG, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA):
    x = self.in_norm(h_BAGD)
    q = self.wq(x).reshape(x.shape[:-1] + (self.num_heads, self.head_dim))
    q = apply_rope(self.q_norm(q), pos_BAG, self.inv_freq)
    k_blk, v_blk = self._kv(x, pos_BAG)
    o = block_attention(q, k_blk, v_blk, k_ctx_BSJK, v_ctx_BSJK, ctx_start_BA, ctx_len_BA, self.head_dim ** -0.5)
    h_BAGD = h_BAGD + self.wo(o.reshape(o.shape[:-2] + (-1,))).astype(h_BAGD.dtype)
    return h_BAGD + self.mlp(self.post_norm(h_BAGD)).astype(h_BAGD.dtype)
