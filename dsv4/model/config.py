"""The target's architecture hyper-parameters: one frozen dataclass, validated when built.

Field names follow DeepSeek's `config.json` where one exists (so a real config maps one to one);
`compress_ratios` is the per-layer attention schedule: 0 = sliding window only, 4 = CSA, 128 = HCA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

from dsv4.errors import ConfigError

ATTENTION_KINDS = {0: "sliding", 4: "csa", 128: "hca"}
SCORING_FUNCS = ("sqrtsoftplus", "sigmoid", "softmax")
# "ragged": dropless, best kernel for the backend; "expert_parallel": experts split over the mesh's expert axis
MOE_IMPLS = ("ragged", "ragged_dot", "tiled", "gather", "dense", "expert_parallel")
DTYPES = ("float32", "bfloat16", "float16")


def known_fields(cls, values: Mapping[str, Any], where: str) -> dict[str, Any]:
  """`values` as a dict, or a ConfigError naming every key that is not a field of the dataclass `cls`."""
  values = dict(values)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ConfigError(
        f"{where}: unknown key(s) {unknown}; known keys are {sorted(known)}. Fix the spelling or remove them.")
  return values


@dataclasses.dataclass(frozen=True)
class YarnConfig:
  """YaRN scaling of the compressed layers' RoPE (CSA/HCA only; sliding layers use plain RoPE)."""

  factor: float = 16.0
  original_max_position_embeddings: int = 65536
  beta_fast: float = 32.0
  beta_slow: float = 1.0


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 129280
  hidden_size: int = 4096
  num_hidden_layers: int = 43
  num_attention_heads: int = 64
  head_dim: int = 512
  q_lora_rank: int = 1024
  qk_rope_head_dim: int = 64
  o_groups: int = 8
  o_lora_rank: int = 1024
  sliding_window: int = 128
  compress_ratios: tuple[int, ...] = (0, 0) + (4, 128) * 20 + (4,)
  rope_theta: float = 10000.0
  compress_rope_theta: float = 160000.0
  yarn: YarnConfig | None = YarnConfig()
  index_n_heads: int = 64
  index_head_dim: int = 128
  index_topk: int = 512
  n_routed_experts: int = 256
  n_shared_experts: int = 1
  num_experts_per_tok: int = 6
  moe_intermediate_size: int = 2048
  scoring_func: str = "sqrtsoftplus"
  routed_scaling_factor: float = 1.5
  num_hash_layers: int = 3
  swiglu_limit: float = 10.0
  hc_mult: int = 4
  hc_sinkhorn_iters: int = 20
  hc_eps: float = 1e-6
  rms_norm_eps: float = 1e-6
  num_nextn_predict_layers: int = 1
  max_position_embeddings: int = 1048576
  bos_token_id: int | None = 0
  eos_token_id: int | None = 1
  # Implementation choices, not architecture.
  moe_impl: str = "ragged"
  moe_capacity_factor: float = 0.0  # expert_parallel only: 0 = dropless; f > 0 = ceil(f·N/n) slots per peer buffer
  dtype: str = "float32"        # compute dtype of activations
  param_dtype: str = "float32"  # storage dtype of matmul weights (norms, mHC, router bias stay fp32)
  family: ClassVar[str] = "deepseek_v4"  # not a field: the target family (dsv4.io.family)

  def __post_init__(self):
    validate(self)

  # --- derived -----------------------------------------------------------------------------------
  @property
  def attention_kinds(self) -> tuple[str, ...]:
    return tuple(ATTENTION_KINDS[r] for r in self.compress_ratios)

  @property
  def hc_mix_size(self) -> int:
    """Width of an mHC map's output: pre (n) + post (n) + comb (n·n)."""
    return (2 + self.hc_mult) * self.hc_mult

  @property
  def is_hash_layer(self) -> tuple[bool, ...]:
    return tuple(i < self.num_hash_layers for i in range(self.num_hidden_layers))

  def replace(self, **changes) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["compress_ratios"] = list(self.compress_ratios)
    return d

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any], where: str = "model config") -> ModelConfig:
    """Builds from a dict or ConfigDict; an unknown key is an error naming it."""
    values = known_fields(cls, values, where)
    if isinstance(values.get("yarn"), Mapping):
      yarn = dict(values["yarn"])
      yknown = {f.name for f in dataclasses.fields(YarnConfig)}
      bad = sorted(set(yarn) - yknown)
      if bad:
        raise ConfigError(f"{where}: unknown key(s) {['yarn.' + b for b in bad]}; known: {sorted(yknown)}.")
      values["yarn"] = YarnConfig(**yarn)
    if "compress_ratios" in values:
      values["compress_ratios"] = tuple(values["compress_ratios"])
    return cls(**values)


def _fail(field: str, msg: str):
  raise ConfigError(f"model.{field}: {msg}")


def validate(c: ModelConfig) -> None:
  """Checks every constraint the model relies on; raises ConfigError naming the offending field."""
  positive = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "q_lora_rank",
              "o_groups", "o_lora_rank", "sliding_window", "n_routed_experts", "num_experts_per_tok",
              "moe_intermediate_size", "hc_mult", "hc_sinkhorn_iters", "max_position_embeddings")
  for name in positive:
    v = getattr(c, name)
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
      _fail(name, f"must be a positive integer, got {v!r}.")
  if len(c.compress_ratios) != c.num_hidden_layers:
    _fail("compress_ratios", f"has {len(c.compress_ratios)} entries but num_hidden_layers is "
          f"{c.num_hidden_layers}; give one ratio per layer.")
  bad = sorted({r for r in c.compress_ratios if r not in ATTENTION_KINDS})
  if bad:
    _fail("compress_ratios", f"entries must be in {{0, 4, 128}} (sliding, CSA, HCA), got {bad}.")
  if c.num_attention_heads % c.o_groups:
    _fail("o_groups", f"({c.o_groups}) must divide num_attention_heads ({c.num_attention_heads}).")
  if not (0 < c.qk_rope_head_dim <= c.head_dim) or c.qk_rope_head_dim % 2:
    _fail("qk_rope_head_dim", f"must be even and in (0, head_dim={c.head_dim}], got {c.qk_rope_head_dim}.")
  if 4 in c.compress_ratios:
    for name in ("index_n_heads", "index_head_dim", "index_topk"):
      v = getattr(c, name)
      if not isinstance(v, int) or v <= 0:
        _fail(name, f"must be a positive integer when any layer is CSA (ratio 4), got {v!r}.")
    if c.qk_rope_head_dim > c.index_head_dim:
      _fail("index_head_dim", f"({c.index_head_dim}) must be ≥ qk_rope_head_dim ({c.qk_rope_head_dim}): the "
            "indexer rotates its last qk_rope_head_dim dims.")
  if c.num_experts_per_tok > c.n_routed_experts:
    _fail("num_experts_per_tok", f"({c.num_experts_per_tok}) exceeds n_routed_experts ({c.n_routed_experts}).")
  if c.n_shared_experts < 0:
    _fail("n_shared_experts", f"must be ≥ 0, got {c.n_shared_experts}.")
  if not 0 <= c.num_hash_layers <= c.num_hidden_layers:
    _fail("num_hash_layers", f"({c.num_hash_layers}) must be between 0 and num_hidden_layers "
          f"({c.num_hidden_layers}).")
  if c.scoring_func not in SCORING_FUNCS:
    _fail("scoring_func", f"must be one of {SCORING_FUNCS}, got {c.scoring_func!r}.")
  if c.moe_impl not in MOE_IMPLS:
    _fail("moe_impl", f"must be one of {MOE_IMPLS}, got {c.moe_impl!r}.")
  f = c.moe_capacity_factor
  if isinstance(f, bool) or not isinstance(f, int | float) or not 0 <= f < float("inf"):
    _fail("moe_capacity_factor", f"must be a finite number ≥ 0 (0 = dropless), got {f!r}.")
  for name in ("dtype", "param_dtype"):
    if getattr(c, name) not in DTYPES:
      _fail(name, f"must be one of {DTYPES}, got {getattr(c, name)!r}.")
  if c.num_nextn_predict_layers < 0:
    _fail("num_nextn_predict_layers", f"must be ≥ 0, got {c.num_nextn_predict_layers}.")
  for name in ("rope_theta", "compress_rope_theta", "routed_scaling_factor", "swiglu_limit", "rms_norm_eps"):
    if not getattr(c, name) > 0:
      _fail(name, f"must be > 0, got {getattr(c, name)!r}.")
  if c.yarn is not None and not (c.yarn.factor >= 1 and c.yarn.original_max_position_embeddings > 0):
    _fail("yarn", f"needs factor ≥ 1 and original_max_position_embeddings > 0, got {c.yarn}.")
  for name in ("bos_token_id", "eos_token_id"):
    v = getattr(c, name)
    if v is not None and not 0 <= v < c.vocab_size:
      _fail(name, f"({v}) must be a token id below vocab_size ({c.vocab_size}) or None.")
