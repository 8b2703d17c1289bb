"""The dense decoder family: Llama 2/3/3.1, SmolLM/SmolLM2, Qwen2 and Qwen3 as one pre-norm transformer.

  h = embed(ids)
  per layer:  h += o_proj(attn(rope(qk_norm?(q_proj(rms(h)))), rope(qk_norm?(k_proj(rms(h)))), v_proj(rms(h))))
              h += down_proj(silu(gate_proj(rms(h))) · up_proj(rms(h)))
  logits = head(rms(h))      head = lm_head, or embedᵀ when the embeddings are tied

Grouped-query attention: query head h reads KV head h // (H / J), as transformers' `repeat_kv`. Module and
parameter names follow transformers' (`layers.N.self_attn.q_proj` …) so loading is a transpose per kernel.
RMSNorm, the Linear kernels with logical axes and the base RoPE table are V4's (dsv4.model.layers, rope).

The model implements the target interface (dsv4.model.target): `forward` with taps and packed rows,
`embed_tokens`/`head`, and the decode state `init_state`/`extend` (dsv4.model.dense_decode), rolled back by
`dsv4.model.decode.rollback`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.decode import ExtendOutput
from dsv4.model.dense_attention import attend_gqa
from dsv4.model.dense_config import DenseConfig
from dsv4.model.dense_decode import extend as _extend
from dsv4.model.dense_decode import init_state as _init_state
from dsv4.model.dense_rope import apply_rope_half, dense_inv_frequencies
from dsv4.model.layers import DTYPES, KeySeq, Linear, RMSNorm, param
from dsv4.model.transformer import TargetOutput


class Affine(Linear):
  """Linear with an optional bias (Qwen2's q/k/v, `attention_bias`, `mlp_bias`)."""

  def __init__(self, d_in: int, d_out: int, axes, bias: bool, *, rngs, dtype, param_dtype):
    super().__init__(d_in, d_out, axes, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.bias = param(rngs, (d_out,), axes[1:], param_dtype, init="zeros") if bias else None

  def __call__(self, x):
    y = super().__call__(x)
    return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class DenseAttention(nnx.Module):

  def __init__(self, cfg: DenseConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D, H, J, K = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    self.num_heads, self.num_kv_heads, self.head_dim = H, J, K
    self.q_proj = Affine(D, H * K, ("embed", "heads"), cfg.qkv_bias, **kw)
    self.k_proj = Affine(D, J * K, ("embed", "kv"), cfg.qkv_bias, **kw)
    self.v_proj = Affine(D, J * K, ("embed", "kv"), cfg.qkv_bias, **kw)
    self.o_proj = Affine(H * K, D, ("heads", "embed"), cfg.o_bias, **kw)
    self.q_norm = RMSNorm(K, cfg.rms_norm_eps) if cfg.qk_norm else None
    self.k_norm = RMSNorm(K, cfg.rms_norm_eps) if cfg.qk_norm else None
    self.inv_freq = dense_inv_frequencies(cfg)

  def qkv(self, x_BTD, pos_BT):
    """Rotated queries [B, T, H, K], rotated keys and values [B, T, J, K]."""
    B, T, _ = x_BTD.shape
    q = self.q_proj(x_BTD).reshape(B, T, self.num_heads, self.head_dim)
    k = self.k_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x_BTD).reshape(B, T, self.num_kv_heads, self.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return apply_rope_half(q, pos_BT, self.inv_freq), apply_rope_half(k, pos_BT, self.inv_freq), v

  def output(self, o_BTHK):
    B, T = o_BTHK.shape[:2]
    return self.o_proj(o_BTHK.reshape(B, T, -1))

  def __call__(self, x_BTD, positions_BT=None, segment_ids_BT=None):
    """Whole rows, causal by row slot; packed rows add per-document RoPE positions and a same-document mask."""
    B, T, _ = x_BTD.shape
    slot_T = jnp.arange(T, dtype=jnp.int32)
    pos_BT = jnp.broadcast_to(slot_T, (B, T)) if positions_BT is None else positions_BT
    q, k, v = self.qkv(x_BTD, pos_BT)
    mask_BTS = jnp.broadcast_to(slot_T[:, None] >= slot_T[None, :], (B, T, T))
    if segment_ids_BT is not None:
      mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] == segment_ids_BT[:, None, :])
    return self.output(attend_gqa(q, k, v, mask_BTS))


class DenseMLP(nnx.Module):

  def __init__(self, cfg: DenseConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D, F = cfg.hidden_size, cfg.intermediate_size
    self.gate_proj = Affine(D, F, ("embed", "mlp"), cfg.mlp_bias, **kw)
    self.up_proj = Affine(D, F, ("embed", "mlp"), cfg.mlp_bias, **kw)
    self.down_proj = Affine(F, D, ("mlp", "embed"), cfg.mlp_bias, **kw)

  def __call__(self, x_BTD):
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD))


class DenseBlock(nnx.Module):

  def __init__(self, cfg: DenseConfig, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.self_attn = DenseAttention(cfg, **kw)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
    self.mlp = DenseMLP(cfg, **kw)

  def __call__(self, h_BTD, attention=None):
    """`attention` (x_BTD -> out_BTD) replaces the whole-row self-attention; decode passes a cached one."""
    h_BTD = h_BTD + (attention or self.self_attn)(self.input_layernorm(h_BTD))
    return h_BTD + self.mlp(self.post_attention_layernorm(h_BTD))


class DenseTransformer(nnx.Module):

  def __init__(self, config: DenseConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype, param_dtype = DTYPES[config.dtype], DTYPES[config.param_dtype]
    rngs = KeySeq(rngs.params())
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    D, V = config.hidden_size, config.vocab_size
    self.embed = param(rngs, (V, D), ("vocab", "embed"), param_dtype)
    self.layers = nnx.List([DenseBlock(config, **kw) for _ in range(config.num_hidden_layers)])
    self.norm = RMSNorm(D, config.rms_norm_eps)
    # Tied: no head of its own; `head` (and FrozenTarget) read embedᵀ.
    self.lm_head = None if config.tie_word_embeddings else param(rngs, (D, V), ("embed", "vocab"), param_dtype)
    self.dtype = dtype

  def embed_tokens(self, ids_BT):
    return self.embed[...][ids_BT].astype(self.dtype)

  def head(self, hidden_BTD):
    """float32 logits; a tied head contracts with the embedding's width axis (no transposed copy)."""
    x = hidden_BTD.astype(self.dtype)
    if self.lm_head is None:
      return jnp.einsum("...d,vd->...v", x, self.embed[...].astype(self.dtype)).astype(jnp.float32)
    return jnp.dot(x, self.lm_head[...].astype(self.dtype)).astype(jnp.float32)

  def forward(self, input_ids_BT, *, tap_layers: tuple[int, ...] = (), positions_BT=None, segment_ids_BT=None,
              moe_impl: str | None = None, with_mtp: bool = False) -> TargetOutput:
    """Logits, the final-normed hidden state and the hidden state after each layer in `tap_layers`.

    Packed rows pass `positions_BT` and `segment_ids_BT` (no token attends across a document boundary).
    `moe_impl` is accepted so callers can treat every target alike; a dense model has no experts.
    """
    if with_mtp:
      raise ValueError("with_mtp: a dense target has no MTP module (only DeepSeek-V4 targets do).")
    bad = [i for i in tap_layers if not 0 <= i < self.config.num_hidden_layers]
    if bad:
      raise ValueError(f"tap_layers {bad}: out of range for {self.config.num_hidden_layers} layers.")
    h = self.embed_tokens(input_ids_BT)
    taps = {}
    for i, layer in enumerate(self.layers):
      h = layer(h, lambda x, attn=layer.self_attn: attn(x, positions_BT, segment_ids_BT))
      if i in tap_layers:
        taps[i] = h
    final_BTD = self.norm(h)
    return TargetOutput(logits_BTV=self.head(final_BTD), final_hidden_BTD=final_BTD,
                        taps_BTLD=jnp.stack([taps[i] for i in tap_layers], axis=2) if tap_layers else None)

  def __call__(self, input_ids_BT):
    """float32 logits [B, S, V] for int32 token ids [B, S]."""
    return self.forward(input_ids_BT).logits_BTV

  # --- decode state (dsv4.model.dense_decode) -----------------------------------------------------
  def init_state(self, batch: int, max_len: int):
    return _init_state(self.config, batch, max_len)

  def extend(self, state, tokens_BN, n_valid_B=None, tap_layers: tuple[int, ...] = ()) -> tuple[ExtendOutput, object]:
    return _extend(self, state, tokens_BN, n_valid_B, tap_layers)
