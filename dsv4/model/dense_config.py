"""Hyper-parameters of the dense decoder family (Llama 2/3/3.1, SmolLM/SmolLM2, Qwen2, Qwen3), built from a
transformers `config.json` dict and validated with errors naming the field.

The three architectures differ in four switches, all recorded here:
  qkv_bias      Qwen2 (always) and `attention_bias` models add a bias to q/k/v
  o_bias        `attention_bias` on Llama and Qwen3 also biases o_proj (Qwen2 never does)
  qk_norm       Qwen3 RMS-normalises each query and key head (over head_dim) before RoPE
  rope_scaling  Llama 3.1's "llama3" frequency rescaling (Llama3RopeScaling), else plain RoPE
RoPE here rotates the two halves of each head (transformers' rotate_half), not V4's interleaved pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from dsv4.errors import ConfigError
from dsv4.model.config import known_fields

MODEL_TYPES = ("llama", "qwen2", "qwen3")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
  """transformers' rope_type "llama3": low frequencies divided by `factor`, a smooth ramp between."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class DenseConfig:
  model_type: str = "llama"
  vocab_size: int = 49152
  hidden_size: int = 576
  intermediate_size: int = 1536
  num_hidden_layers: int = 30
  num_attention_heads: int = 9
  num_key_value_heads: int = 3
  head_dim: int = 64
  rope_theta: float = 100000.0
  rope_scaling: Llama3RopeScaling | None = None
  rms_norm_eps: float = 1e-5
  max_position_embeddings: int = 8192
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False
  qk_norm: bool = False
  tie_word_embeddings: bool = True
  bos_token_id: int | None = 1
  eos_token_id: int | None = 2
  dtype: str = "float32"        # compute dtype of activations
  param_dtype: str = "float32"  # storage dtype of matmul weights (norms stay fp32)

  # Not fields (so to_dict and the config hash drafters record are unaffected): what V4-only paths ask for.
  family: ClassVar[str] = "dense"
  num_nextn_predict_layers: ClassVar[int] = 0  # no MTP module
  hc_mult: ClassVar[int] = 1                   # one residual stream (no mHC)

  def __post_init__(self):
    validate(self)

  def replace(self, **changes) -> DenseConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any], where: str = "dense config") -> DenseConfig:
    """From `to_dict()` output; an unknown key is an error naming it."""
    values = known_fields(cls, values, where)
    if isinstance(values.get("rope_scaling"), Mapping):
      values["rope_scaling"] = Llama3RopeScaling(**values["rope_scaling"])
    return cls(**values)


def _fail(field: str, msg: str):
  raise ConfigError(f"model.{field}: {msg}")


def validate(c: DenseConfig) -> None:
  if c.model_type not in MODEL_TYPES:
    _fail("model_type", f"must be one of {MODEL_TYPES}, got {c.model_type!r}.")
  for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings"):
    v = getattr(c, name)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(name, f"must be a positive integer, got {v!r}.")
  if c.num_attention_heads % c.num_key_value_heads:
    _fail("num_key_value_heads", f"({c.num_key_value_heads}) must divide num_attention_heads "
          f"({c.num_attention_heads}): each KV head serves a whole group of query heads.")
  if c.head_dim % 2:
    _fail("head_dim", f"must be even (RoPE rotates pairs), got {c.head_dim}.")
  for name in ("rope_theta", "rms_norm_eps"):
    if not getattr(c, name) > 0:
      _fail(name, f"must be > 0, got {getattr(c, name)!r}.")
  s = c.rope_scaling
  if s is not None and not (s.factor >= 1 and s.high_freq_factor > s.low_freq_factor > 0
                            and s.original_max_position_embeddings > 0):
    _fail("rope_scaling", f"llama3 scaling needs factor ≥ 1, high_freq_factor > low_freq_factor > 0 and "
          f"original_max_position_embeddings > 0, got {s}.")
  for name in ("dtype", "param_dtype"):
    if getattr(c, name) not in DTYPES:
      _fail(name, f"must be one of {DTYPES}, got {getattr(c, name)!r}.")
  for name in ("bos_token_id", "eos_token_id"):
    v = getattr(c, name)
    if v is not None and not 0 <= v < c.vocab_size:
      _fail(name, f"({v}) must be a token id below vocab_size ({c.vocab_size}) or None.")


def _err(where: str, field: str, msg: str):
  raise ConfigError(f"{where}: `{field}` {msg}")


def _rope(d: Mapping[str, Any], where: str) -> tuple[float, Llama3RopeScaling | None]:
  """(theta, llama3 scaling) from transformers 5's `rope_parameters` or the older `rope_theta`/`rope_scaling`."""
  rp = dict(d.get("rope_parameters") or {})
  legacy = dict(d.get("rope_scaling") or {})
  theta = rp.get("rope_theta", d.get("rope_theta", 10000.0))
  params = {**legacy, **rp}
  kind = params.get("rope_type", params.get("type", "default"))
  field = "rope_parameters" if rp else "rope_scaling"
  if kind == "default":
    return float(theta), None
  if kind != "llama3":
    _err(where, field, f"has rope_type {kind!r}; the dense family supports 'default' and 'llama3'.")
  missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in params]
  if missing:
    _err(where, f"{field}.{missing[0]}", "is missing (llama3 RoPE scaling needs it).")
  return float(theta), Llama3RopeScaling(
      factor=float(params["factor"]), low_freq_factor=float(params["low_freq_factor"]),
      high_freq_factor=float(params["high_freq_factor"]),
      original_max_position_embeddings=int(params.get("original_max_position_embeddings",
                                                      d.get("max_position_embeddings", 8192))))


def _token_id(v):
  return v[0] if isinstance(v, list) and v else (None if isinstance(v, list) else v)


def dense_config_from_hf(d: Mapping[str, Any], where: str = "config.json", **overrides) -> DenseConfig:
  """A DenseConfig from a transformers LlamaConfig / Qwen2Config / Qwen3Config dict (its config.json).

  `overrides` set fields that are not architecture (dtype, param_dtype). Anything the family cannot compute
  exactly (sliding-window layers, another activation, partial rotary) is refused with the field named.
  """
  model_type = d.get("model_type")
  if model_type not in MODEL_TYPES:
    _err(where, "model_type", f"is {model_type!r}; the dense family loads {MODEL_TYPES}.")
  missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads") if d.get(k) is None]
  if missing:
    _err(where, missing[0], f"is missing; a {model_type} config.json names it.")
  if d.get("hidden_act", "silu") != "silu":
    _err(where, "hidden_act", f"is {d['hidden_act']!r}; the dense family's MLP is SwiGLU (silu).")
  if d.get("use_sliding_window") or any(t != "full_attention" for t in d.get("layer_types") or ()):
    _err(where, "use_sliding_window", "sliding-window layers are not supported; every layer must be full_attention.")
  if d.get("partial_rotary_factor", 1.0) != 1.0:
    _err(where, "partial_rotary_factor", "must be 1.0 (RoPE over the whole head).")
  if d.get("pretraining_tp", 1) != 1:
    _err(where, "pretraining_tp", "must be 1.")
  H = int(d["num_attention_heads"])
  theta, scaling = _rope(d, where)
  bias = bool(d.get("attention_bias", False))
  out = dict(
      model_type=model_type, vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
      intermediate_size=int(d["intermediate_size"]), num_hidden_layers=int(d["num_hidden_layers"]),
      num_attention_heads=H, num_key_value_heads=int(d.get("num_key_value_heads") or H),
      head_dim=int(d.get("head_dim") or d["hidden_size"] // H), rope_theta=theta, rope_scaling=scaling,
      rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), max_position_embeddings=int(d.get("max_position_embeddings",
                                                                                          2048)),
      qkv_bias=True if model_type == "qwen2" else bias, o_bias=False if model_type == "qwen2" else bias,
      mlp_bias=bool(d.get("mlp_bias", False)), qk_norm=model_type == "qwen3",
      tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
      bos_token_id=_token_id(d.get("bos_token_id")), eos_token_id=_token_id(d.get("eos_token_id")))
  out.update(overrides)
  try:
    return DenseConfig(**out)
  except TypeError as e:
    raise ConfigError(f"{where}: {e}") from e


def dense_config_to_hf(c: DenseConfig) -> dict[str, Any]:
  """A config.json transformers' LlamaForCausalLM / Qwen2ForCausalLM / Qwen3ForCausalLM loads as the same model."""
  rope = {"rope_type": "default", "rope_theta": c.rope_theta}
  if c.rope_scaling is not None:
    rope.update(rope_type="llama3", **dataclasses.asdict(c.rope_scaling))
  arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[c.model_type]
  d = {k: getattr(c, k) for k in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                                   "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id")}
  d.update(architectures=[arch], hidden_act="silu", rope_parameters=rope, rope_theta=c.rope_theta,
           attention_bias=c.o_bias if c.model_type != "qwen2" else False, mlp_bias=c.mlp_bias, dtype=c.param_dtype)
  return d
