"""The drafter's hyper-parameters: one frozen dataclass, validated when built.

`kind="dspark"` is the DSpark drafter (dsv4.drafters.dspark): a block of γ = `block_size` slots (the anchor,
i.e. the last committed token, plus γ−1 mask slots, every slot predicting), a backbone of `num_layers` layers
reading the target's context features as injected keys/values, the target's frozen embedding and LM head, an
optional sequential head (`markov`) and confidence head. Defaults are DeepSpec's (loss weights 0.1 / 0.9 / 1.0,
position decay 4.0, rank 256, 5 taps, 5 layers, γ = 7).

DFlash is a config of the same class, not a class of its own: `dflash_config()` — no sequential head, no
confidence head, CE-only loss (DeepSpec trains its DFlash baseline with the DSpark code and these switches).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from dsv4.errors import ConfigError
from dsv4.model.config import DTYPES, ModelConfig, known_fields

KINDS = ("dspark", "eagle3", "mtp")  # eagle3: dsv4.drafters.eagle3; mtp: the target's own MTP module
LAYER_TYPES = ("dense", "v4")        # v4: mHC + sliding-window attention + MoE (dsv4.drafters.v4_layer)
MARKOV_KINDS = ("none", "markov", "rnn")


@dataclasses.dataclass(frozen=True)
class DrafterConfig:
  kind: str = "dspark"
  block_size: int = 7                   # γ: anchor + γ−1 masks, γ drafts per round, τ ≤ γ + 1
  num_layers: int = 5
  layer_type: str = "dense"
  hidden_size: int = 4096               # must equal the target's (the drafter reads its embedding and head)
  num_attention_heads: int = 32
  num_key_value_heads: int = 8          # GQA groups; must divide num_attention_heads
  head_dim: int = 128                   # RoPE rotates the whole head, so even
  intermediate_size: int = 12288        # SwiGLU width of a dense layer
  # layer_type="v4" only (dsv4.drafters.v4_layer); same names and meanings as dsv4.model.config.ModelConfig.
  # Defaults: one V4-Flash block's MoE shape (the production drafter sits in the MTP module's slots, mtp.0–2).
  n_routed_experts: int = 256
  n_shared_experts: int = 1
  num_experts_per_tok: int = 6
  moe_intermediate_size: int = 2048     # width of each routed and shared expert
  hc_mult: int = 4                      # mHC residual streams
  sliding_window: int = 128             # a block sees context entries [max(ctx_start, anchor − W), anchor)
  rope_theta: float = 10000.0
  rms_norm_eps: float = 1e-6
  swiglu_limit: float | None = None     # None: a plain SwiGLU; a number clamps like the target's experts
  target_layer_ids: tuple[int, ...] = (1, 11, 21, 31, 41)  # target layers tapped (0-based layer outputs)
  markov: str = "markov"                # sequential head: none | markov (W2·W1[x_{k−1}]) | rnn
  markov_rank: int = 256                # r
  confidence_head: bool = True
  alpha_ce: float = 0.1
  alpha_tv: float = 0.9                 # weight of the full L1 ‖p_d − p_t‖₁ (= 2·TV), as DeepSpec
  alpha_conf: float = 1.0
  alpha_soft_ce: float = 0.0            # −Σ p_t log p_d, soft-label CE against the target (EAGLE-3's loss)
  decay: float = 4.0                    # position weights exp(−k/decay), k = 0..γ−1
  dtype: str = "float32"                # compute dtype of activations
  param_dtype: str = "float32"          # storage dtype of the drafter's weights

  def __post_init__(self):
    validate(self)

  @property
  def num_taps(self) -> int:
    return len(self.target_layer_ids)

  def replace(self, **changes) -> DrafterConfig:
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["target_layer_ids"] = list(self.target_layer_ids)
    return d

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any], where: str = "drafter config") -> DrafterConfig:
    """Builds from a dict or ConfigDict; an unknown key is an error naming it; lists become tuples."""
    values = known_fields(cls, values, where)
    if isinstance(values.get("target_layer_ids"), list | tuple):
      values["target_layer_ids"] = tuple(values["target_layer_ids"])
    return cls(**values)

  def check_against_target(self, target: ModelConfig) -> None:
    """The drafter fits this target: tapped layers exist and the widths agree. Raises ConfigError."""
    family = getattr(target, "family", "deepseek_v4")
    if family != "deepseek_v4":  # the one place a drafter asks for V4 internals
      if self.kind == "mtp":
        _fail("kind", f"'mtp' drafts with a DeepSeek-V4 target's own MTP module and mHC streams; this target is "
              f"{family} ({getattr(target, 'model_type', family)}), which has neither. Use kind 'dspark' or 'eagle3'.")
      if self.layer_type == "v4":
        _fail("layer_type", f"'v4' layers copy a DeepSeek-V4 target's MoE routing and mHC conventions; this target "
              f"is {family}. Use layer_type 'dense'.")
    if self.kind == "mtp" and target.num_nextn_predict_layers < 1:
      _fail("kind", f"'mtp' drafts with the target's own MTP module, but the target has num_nextn_predict_layers="
            f"{target.num_nextn_predict_layers}; use a target with num_nextn_predict_layers ≥ 1 (a checkpoint "
            "holding mtp.0.* weights) or another drafter kind.")
    n = target.num_hidden_layers
    bad = [] if self.kind == "mtp" else [i for i in self.target_layer_ids if not 0 <= i < n]  # MTP reads no taps
    if bad:
      _fail("target_layer_ids", f"layer id(s) {bad} out of range for a target with {n} layers (valid ids are "
            f"0..{n - 1}: the output of that decoder layer).")
    if self.hidden_size != target.hidden_size:
      _fail("hidden_size", f"({self.hidden_size}) must equal the target's hidden_size ({target.hidden_size}): the "
            "drafter embeds with the target's embedding and predicts with its LM head.")


DFLASH = dict(markov="none", markov_rank=0, confidence_head=False, alpha_ce=1.0, alpha_tv=0.0, alpha_conf=0.0)


# DFlash trained on the target's distribution with DSpark's own loss terms (CE 0.1 + L1 0.9): the same objective as
# DSpark, so a DSpark-vs-this comparison isolates the sequential and confidence heads.
DFLASH_KD = dict(DFLASH, alpha_ce=0.1, alpha_tv=0.9)
DFLASH_OBJECTIVES = {"data": DFLASH, "target": DFLASH_KD}


def dflash_config(objective: str = "data", **changes) -> DrafterConfig:
  """DFlash as a DSpark config: no sequential head, no confidence head. `objective="data"` is the published
  CE-only loss on the data tokens (DeepSpec's baseline); `"target"` learns the target's distribution with DSpark's
  CE + L1 terms."""
  if objective not in DFLASH_OBJECTIVES:
    raise ConfigError(f"dflash objective {objective!r}: choose one of {tuple(DFLASH_OBJECTIVES)}.")
  return DrafterConfig(**{**DFLASH_OBJECTIVES[objective], **changes})


EAGLE3 = dict(kind="eagle3", num_layers=1, markov="none", markov_rank=0, confidence_head=False, alpha_ce=0.0,
              alpha_tv=0.0, alpha_conf=0.0, alpha_soft_ce=1.0, decay=-1.0 / math.log(0.8))


def eagle3_config(**changes) -> DrafterConfig:
  """EAGLE-3 (dsv4.drafters.eagle3, SpecForge's recipe): one layer, no heads, soft-label CE against the target
  only, slot weights 0.8^k (= exp(−k/decay) with decay = −1/ln 0.8)."""
  return DrafterConfig(**{**EAGLE3, **changes})


MTP = dict(kind="mtp", block_size=1, num_layers=1, markov="none", markov_rank=0, confidence_head=False, alpha_ce=0.0,
           alpha_tv=0.0, alpha_conf=0.0, alpha_soft_ce=1.0)


def mtp_config(**changes) -> DrafterConfig:
  """The target's own MTP module as a drafter (dsv4.drafters.mtp): one module (num_layers=1), no sequential or
  confidence head, block_size=1 (MTP-1; k > 1 chains the module on its own output streams).

  Loss: soft-label CE against the target only (α_soft_ce=1, α_ce=α_tv=α_conf=0). The module arrives already
  trained with hard CE on the pretraining data; as a drafter it should match the target's distribution, which
  acceptance measures (α = 1 − TV ≥ 1 − √(KL(p_t‖p_d)/2), and soft CE = KL(p_t‖p_d) + H(p_t)). Hard CE on the
  regenerated token is a one-sample estimate of the same soft CE; the full distribution is the lower-variance
  signal, and the target logits are at hand anyway (the frozen head of the target's final hidden).
  """
  return DrafterConfig(**{**MTP, **changes})


def _fail(field: str, msg: str):
  raise ConfigError(f"drafter.{field}: {msg}")


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate(c: DrafterConfig) -> None:
  """Checks every constraint the drafter relies on; raises ConfigError naming the offending field."""
  if c.kind not in KINDS:
    _fail("kind", f"must be one of {KINDS}, got {c.kind!r}.")
  if not _is_int(c.block_size) or c.block_size < 1:
    _fail("block_size", f"must be an integer ≥ 1 (the anchor slot plus block_size − 1 masks), got {c.block_size!r}.")
  for name in ("num_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
               "intermediate_size"):
    v = getattr(c, name)
    if not _is_int(v) or v <= 0:
      _fail(name, f"must be a positive integer, got {v!r}.")
  if c.layer_type not in LAYER_TYPES:
    _fail("layer_type", f"must be one of {LAYER_TYPES}, got {c.layer_type!r}.")
  for name in ("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size", "hc_mult", "sliding_window"):
    v = getattr(c, name)
    if not _is_int(v) or v <= 0:
      _fail(name, f"must be a positive integer (used by layer_type='v4'), got {v!r}.")
  if not _is_int(c.n_shared_experts) or c.n_shared_experts < 0:
    _fail("n_shared_experts", f"must be an integer ≥ 0 (used by layer_type='v4'), got {c.n_shared_experts!r}.")
  if c.num_experts_per_tok > c.n_routed_experts:
    _fail("num_experts_per_tok", f"({c.num_experts_per_tok}) exceeds n_routed_experts ({c.n_routed_experts}): "
          "each token picks that many distinct experts.")
  if c.num_attention_heads % c.num_key_value_heads:
    _fail("num_key_value_heads", f"({c.num_key_value_heads}) must divide num_attention_heads "
          f"({c.num_attention_heads}).")
  if c.head_dim % 2:
    _fail("head_dim", f"must be even (RoPE rotates channel pairs), got {c.head_dim}.")
  for name in ("rope_theta", "rms_norm_eps", "decay"):
    if not getattr(c, name) > 0:
      _fail(name, f"must be > 0, got {getattr(c, name)!r}.")
  if c.swiglu_limit is not None and not c.swiglu_limit > 0:
    _fail("swiglu_limit", f"must be > 0 or None (no clamp), got {c.swiglu_limit!r}.")
  ids = c.target_layer_ids
  if not isinstance(ids, tuple) or not ids or not all(_is_int(i) for i in ids):
    _fail("target_layer_ids", f"must be a non-empty tuple of target layer ids, got {ids!r}.")
  if len(set(ids)) != len(ids) or min(ids) < 0:
    _fail("target_layer_ids", f"must be distinct ids ≥ 0, got {ids}.")
  if c.markov not in MARKOV_KINDS:
    _fail("markov", f"must be one of {MARKOV_KINDS}, got {c.markov!r}.")
  if not _is_int(c.markov_rank) or c.markov_rank < 0 or (c.markov != "none" and c.markov_rank == 0):
    _fail("markov_rank", f"must be a positive integer when markov={c.markov!r} (≥ 0 otherwise), got "
          f"{c.markov_rank!r}.")
  if not isinstance(c.confidence_head, bool):
    _fail("confidence_head", f"must be a bool, got {c.confidence_head!r}.")
  single = {"eagle3": "one decoder layer, run once per drafted token",
            "mtp": "one MTP module, chained for block_size > 1"}
  if c.kind in single:  # SpecForge asserts one EAGLE-3 layer; the MTP drafter is one copy of the target's module
    if c.num_layers != 1:
      _fail("num_layers", f"must be 1 for kind={c.kind!r} ({single[c.kind]}), got {c.num_layers}; start from "
            f"{c.kind}_config().")
    if c.markov != "none":
      _fail("markov", f"must be 'none' for kind={c.kind!r} (no sequential head), got {c.markov!r}.")
    if c.confidence_head:
      _fail("confidence_head", f"must be False for kind={c.kind!r} (no confidence head); set alpha_conf=0 too.")
  for name in ("alpha_ce", "alpha_tv", "alpha_conf", "alpha_soft_ce"):
    if not getattr(c, name) >= 0:
      _fail(name, f"must be ≥ 0, got {getattr(c, name)!r}.")
  if c.alpha_ce + c.alpha_tv + c.alpha_conf + c.alpha_soft_ce <= 0:
    _fail("alpha_ce", "alpha_ce, alpha_tv, alpha_conf and alpha_soft_ce are all 0: nothing would be trained.")
  if c.alpha_conf > 0 and not c.confidence_head:
    _fail("alpha_conf", f"is {c.alpha_conf} but confidence_head is False; set alpha_conf=0 or enable the head.")
  for name in ("dtype", "param_dtype"):
    if getattr(c, name) not in DTYPES:
      _fail(name, f"must be one of {DTYPES}, got {getattr(c, name)!r}.")
