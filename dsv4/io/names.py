"""Tensor names: our NNX parameter paths ↔ DeepSeek-native checkpoint names.

The native names are the ones DeepSeek ships (`embed.weight`, `layers.N.attn.wq_a.weight`,
`layers.N.ffn.experts.E.w1.weight`, `hc_head_fn`, `mtp.K.*`, ...); torch stores Linear weights [out, in],
we store kernels [in, out]. transformers' `save_pretrained` writes the native names under a `model.`
prefix, except `model.embed_tokens.weight`, `model.hc_head.hc_{fn,base,scale}` and `head.weight`;
`normalize` folds that layout (and the native one) onto native names.

Each `Spec` ties one of our parameters to one or more native tensors (experts: one per expert) with the
two exact conversions; tests check that HF → ours → HF reproduces every tensor bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import numpy as np

from dsv4.model.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Spec:
  path: tuple                 # our NNX state path
  names: tuple[str, ...]      # native tensor names
  native_shapes: tuple[tuple[int, ...], ...]
  to_ours: Callable           # list of native arrays -> our array
  to_native: Callable         # our array -> list of native arrays


def _transpose(shape):
  def to_ours(ts):
    return np.ascontiguousarray(ts[0].T)

  def to_native(a):
    return [np.ascontiguousarray(a.T)]
  return shape, to_ours, to_native


def _same(shape):
  return shape, (lambda ts: ts[0]), (lambda a: [a])


class _Builder:

  def __init__(self):
    self.specs: list[Spec] = []

  def linear(self, path, name, d_in, d_out):
    shape, to_ours, to_native = _transpose((d_out, d_in))
    self.specs.append(Spec(path, (name,), (shape,), to_ours, to_native))

  def same(self, path, name, shape):
    shape, to_ours, to_native = _same(tuple(shape))
    self.specs.append(Spec(path, (name,), (shape,), to_ours, to_native))

  def custom(self, path, names, shapes, to_ours, to_native):
    self.specs.append(Spec(path, tuple(names), tuple(shapes), to_ours, to_native))


def _compressor(b: _Builder, p: tuple, n: str, cfg: ModelConfig, head_dim: int, ratio: int, overlap: bool):
  width = 2 * head_dim if overlap else head_dim
  b.linear(p + ("kv_proj", "kernel"), n + "wkv.weight", cfg.hidden_size, width)
  b.linear(p + ("gate_proj", "kernel"), n + "wgate.weight", cfg.hidden_size, width)
  b.same(p + ("position_bias",), n + "ape", (ratio, width))
  b.same(p + ("kv_norm", "weight"), n + "norm.weight", (head_dim,))


def _block(b: _Builder, p: tuple, n: str, cfg: ModelConfig, ratio: int, is_hash: bool):
  D, H, hd, G, R = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim, cfg.o_groups, cfg.o_lora_rank)
  N, mix = cfg.hc_mult, cfg.hc_mix_size
  for ours, native in (("attn_hc", "hc_attn"), ("ffn_hc", "hc_ffn")):
    b.linear(p + (ours, "fn"), f"{n}{native}_fn", N * D, mix)
    b.same(p + (ours, "base"), f"{n}{native}_base", (mix,))
    b.same(p + (ours, "scale"), f"{n}{native}_scale", (3,))
  b.same(p + ("attn_norm", "weight"), n + "attn_norm.weight", (D,))
  b.same(p + ("ffn_norm", "weight"), n + "ffn_norm.weight", (D,))
  a, an = p + ("attn",), n + "attn."
  b.linear(a + ("q_a_proj", "kernel"), an + "wq_a.weight", D, cfg.q_lora_rank)
  b.same(a + ("q_a_norm", "weight"), an + "q_norm.weight", (cfg.q_lora_rank,))
  b.linear(a + ("q_b_proj", "kernel"), an + "wq_b.weight", cfg.q_lora_rank, H * hd)
  b.linear(a + ("kv_proj", "kernel"), an + "wkv.weight", D, hd)
  b.same(a + ("kv_norm", "weight"), an + "norm.weight", (hd,))
  in_g = H * hd // G
  # torch [G·R, in_g] viewed [G, R, in_g]; ours [G, in_g, R].
  b.custom(a + ("o_a_proj",), [an + "wo_a.weight"], [(G * R, in_g)],
           lambda ts: np.ascontiguousarray(ts[0].reshape(G, R, in_g).transpose(0, 2, 1)),
           lambda x: [np.ascontiguousarray(x.transpose(0, 2, 1).reshape(G * R, in_g))])
  b.linear(a + ("o_b_proj", "kernel"), an + "wo_b.weight", G * R, D)
  b.same(a + ("sinks",), an + "attn_sink", (H,))
  if ratio:
    _compressor(b, a + ("compressor",), an + "compressor.", cfg, hd, ratio, ratio == 4)
  if ratio == 4:
    ip, inn = a + ("indexer",), an + "indexer."
    _compressor(b, ip + ("compressor",), inn + "compressor.", cfg, cfg.index_head_dim, ratio, True)
    b.linear(ip + ("q_b_proj", "kernel"), inn + "wq_b.weight", cfg.q_lora_rank, cfg.index_n_heads * cfg.index_head_dim)
    b.linear(ip + ("weights_proj", "kernel"), inn + "weights_proj.weight", D, cfg.index_n_heads)
  f, fn = p + ("ffn",), n + "ffn."
  E, I, K = cfg.n_routed_experts, cfg.moe_intermediate_size, cfg.num_experts_per_tok
  b.linear(f + ("router",), fn + "gate.weight", D, E)
  if is_hash:
    b.custom(f + ("tid2eid",), [fn + "gate.tid2eid"], [(cfg.vocab_size, K)],
             lambda ts: ts[0].astype(np.int32), lambda x: [np.asarray(x).astype(np.int64)])
  else:
    b.same(f + ("bias",), fn + "gate.bias", (E,))
  for ours, w, shape in (("w_gate", "w1", (I, D)), ("w_up", "w3", (I, D)), ("w_down", "w2", (D, I))):
    names = [f"{fn}experts.{e}.{w}.weight" for e in range(E)]
    b.custom(f + (ours,), names, [shape] * E,
             lambda ts: np.ascontiguousarray(np.stack(ts).transpose(0, 2, 1)),
             lambda x: [np.ascontiguousarray(x[e].T) for e in range(x.shape[0])])
  if cfg.n_shared_experts:
    Is = I * cfg.n_shared_experts
    s, sn = f + ("shared",), fn + "shared_experts."
    b.linear(s + ("gate_proj", "kernel"), sn + "w1.weight", D, Is)
    b.linear(s + ("up_proj", "kernel"), sn + "w3.weight", D, Is)
    b.linear(s + ("down_proj", "kernel"), sn + "w2.weight", Is, D)


def _hc_head(b: _Builder, p: tuple, n: str, cfg: ModelConfig):
  N, D = cfg.hc_mult, cfg.hidden_size
  b.linear(p + ("hc_head", "fn"), n + "hc_head_fn", N * D, N)
  b.same(p + ("hc_head", "base"), n + "hc_head_base", (N,))
  b.same(p + ("hc_head", "scale"), n + "hc_head_scale", (1,))


def specs(cfg: ModelConfig) -> list[Spec]:
  """Every tensor of a model with this config, in a fixed order."""
  b = _Builder()
  V, D = cfg.vocab_size, cfg.hidden_size
  b.same(("embed",), "embed.weight", (V, D))
  for i, (ratio, is_hash) in enumerate(zip(cfg.compress_ratios, cfg.is_hash_layer, strict=True)):
    _block(b, ("layers", i), f"layers.{i}.", cfg, ratio, is_hash)
  _hc_head(b, (), "", cfg)
  b.same(("norm", "weight"), "norm.weight", (D,))
  b.linear(("lm_head",), "head.weight", D, V)
  for k in range(cfg.num_nextn_predict_layers):
    p, n = ("mtp", k), f"mtp.{k}."
    b.same(p + ("enorm", "weight"), n + "enorm.weight", (D,))
    b.same(p + ("hnorm", "weight"), n + "hnorm.weight", (D,))
    b.linear(p + ("e_proj", "kernel"), n + "e_proj.weight", D, D)
    b.linear(p + ("h_proj", "kernel"), n + "h_proj.weight", D, D)
    _block(b, p + ("block",), n, cfg, 0, False)
    _hc_head(b, p, n, cfg)
    b.same(p + ("norm", "weight"), n + "norm.weight", (D,))
  return b.specs


# transformers' save_pretrained layout → native. Applied after stripping a leading `model.`.
_HF_SAVED_TO_NATIVE = (
    (re.compile(r"^embed_tokens\.weight$"), "embed.weight"),
    (re.compile(r"^lm_head\.weight$"), "head.weight"),
    (re.compile(r"^hc_head\.hc_(fn|base|scale)$"), r"hc_head_\1"),
)


def normalize(name: str) -> str:
  """A checkpoint tensor name in native or transformers-saved layout → its native name."""
  if name.startswith("model."):
    name = name[len("model."):]
  for pattern, repl in _HF_SAVED_TO_NATIVE:
    name = pattern.sub(repl, name)
  return name


def hf_saved_name(native: str) -> str:
  """The name transformers' save_pretrained gives a native tensor (MTP stays native: transformers skips it)."""
  if native == "head.weight" or native.startswith("mtp."):
    return native
  if native == "embed.weight":
    return "model.embed_tokens.weight"
  m = re.fullmatch(r"hc_head_(fn|base|scale)", native)
  if m:
    return f"model.hc_head.hc_{m.group(1)}"
  return "model." + native
