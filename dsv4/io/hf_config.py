"""transformers' `DeepseekV4Config` JSON ↔ our ModelConfig.

Reads the current layout (`layer_types`, `mlp_layer_types`, nested `rope_parameters` {main, compress}) and
the legacy keys DeepSeek's own config.json uses (`compress_ratios`, `num_hash_layers`, `qk_rope_head_dim`).
Anything we cannot represent exactly (other compress rates, un-normalised top-k, a YaRN attention factor
≠ 1, a hash layer after a learned one) is refused with the field named.
"""

from __future__ import annotations

from typing import Any

from dsv4.errors import ConfigError
from dsv4.model.config import ModelConfig, YarnConfig

_KIND_TO_RATIO = {"sliding_attention": 0, "compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
_RATIO_TO_KIND = {v: k for k, v in _KIND_TO_RATIO.items()}
_COPIED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "q_lora_rank",
           "o_groups", "o_lora_rank", "sliding_window", "index_n_heads", "index_head_dim", "index_topk",
           "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "scoring_func",
           "routed_scaling_factor", "swiglu_limit", "hc_mult", "hc_sinkhorn_iters", "hc_eps", "rms_norm_eps",
           "num_nextn_predict_layers", "max_position_embeddings", "bos_token_id")


def _err(path: str, field: str, msg: str):
  raise ConfigError(f"{path}: `{field}` {msg}")


def from_hf_dict(d: dict[str, Any], path: str = "config.json", **overrides) -> ModelConfig:
  if d.get("model_type") not in (None, "deepseek_v4"):
    _err(path, "model_type", f"is {d.get('model_type')!r}; dsv4 loads DeepSeek-V4 checkpoints (deepseek_v4).")
  missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers") if k not in d]
  if missing:
    _err(path, missing[0], "is missing; is this a DeepSeek-V4 config.json?")
  out = {k: d[k] for k in _COPIED if k in d}
  eos = d.get("eos_token_id")
  out["eos_token_id"] = eos[0] if isinstance(eos, list) else eos
  n = d["num_hidden_layers"]

  rates = {**{"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}, **(d.get("compress_rates") or {})}
  for kind, want in (("compressed_sparse_attention", 4), ("heavily_compressed_attention", 128)):
    if rates[kind] != want:
      _err(path, "compress_rates", f"gives {kind} rate {rates[kind]}; only 4 (CSA) and 128 (HCA) are supported.")
  if d.get("layer_types") is not None:
    unknown = sorted(set(d["layer_types"]) - set(_KIND_TO_RATIO))
    if unknown:
      _err(path, "layer_types", f"has unknown entries {unknown}.")
    out["compress_ratios"] = tuple(_KIND_TO_RATIO[t] for t in d["layer_types"][:n])
  elif d.get("compress_ratios") is not None:
    out["compress_ratios"] = tuple(int(r) for r in d["compress_ratios"][:n])
  else:  # transformers' default schedule: 2 HCA, then CSA/HCA alternating
    out["compress_ratios"] = tuple([128] * min(n, 2) + [4 if i % 2 else 128 for i in range(max(n - 2, 0))])

  if d.get("mlp_layer_types") is not None:
    types = list(d["mlp_layer_types"][:n])
    n_hash = sum(t == "hash_moe" for t in types)
    if types != ["hash_moe"] * n_hash + ["moe"] * (len(types) - n_hash):
      _err(path, "mlp_layer_types", "must be hash_moe layers first, then moe layers.")
    out["num_hash_layers"] = n_hash
  else:
    out["num_hash_layers"] = min(n, int(d.get("num_hash_layers", 3)))

  if "qk_rope_head_dim" in d:
    out["qk_rope_head_dim"] = int(d["qk_rope_head_dim"])
  else:
    out["qk_rope_head_dim"] = int(d.get("head_dim", 512) * (d.get("partial_rotary_factor") or 64 / 512))

  rp = d.get("rope_parameters") or {}
  main, comp = rp.get("main"), rp.get("compress")
  out["rope_theta"] = float((main or {}).get("rope_theta", d.get("rope_theta", 10000.0)))
  out["compress_rope_theta"] = float((comp or {}).get("rope_theta", d.get("compress_rope_theta", 160000.0)))
  yarn_src = comp if isinstance(comp, dict) else (rp if rp.get("rope_type", rp.get("type")) == "yarn" else None)
  if yarn_src and yarn_src.get("rope_type", yarn_src.get("type")) == "yarn":
    if yarn_src.get("attention_factor", 1.0) != 1.0:
      _err(path, "rope_parameters.compress.attention_factor", "must be 1.0 (V4 does not rescale cos/sin).")
    out["yarn"] = YarnConfig(factor=float(yarn_src["factor"]),
                             original_max_position_embeddings=int(yarn_src["original_max_position_embeddings"]),
                             beta_fast=float(yarn_src.get("beta_fast") or 32),
                             beta_slow=float(yarn_src.get("beta_slow") or 1))
  else:
    out["yarn"] = None
  if d.get("n_shared_experts", 1) != 1:
    _err(path, "n_shared_experts", f"is {d['n_shared_experts']}; V4 (and transformers' DeepseekV4) has exactly one "
         "shared expert.")
  if d.get("norm_topk_prob", True) is not True:
    _err(path, "norm_topk_prob", "must be true: V4 renormalises the top-k weights.")
  out.update(overrides)
  return ModelConfig.from_mapping(out, where=path)


def to_hf_dict(c: ModelConfig) -> dict[str, Any]:
  """A config.json that transformers' DeepseekV4ForCausalLM loads as the same architecture."""
  compress = {"rope_type": "default", "rope_theta": c.compress_rope_theta,
              "partial_rotary_factor": c.qk_rope_head_dim / c.head_dim}
  if c.yarn is not None:
    compress.update(rope_type="yarn", factor=c.yarn.factor, attention_factor=1.0, beta_fast=c.yarn.beta_fast,
                    beta_slow=c.yarn.beta_slow,
                    original_max_position_embeddings=c.yarn.original_max_position_embeddings)
  d = {k: getattr(c, k) for k in _COPIED}
  d.update(
      architectures=["DeepseekV4ForCausalLM"], model_type="deepseek_v4", eos_token_id=c.eos_token_id,
      num_key_value_heads=1, qk_rope_head_dim=c.qk_rope_head_dim, partial_rotary_factor=c.qk_rope_head_dim / c.head_dim,
      layer_types=[_RATIO_TO_KIND[r] for r in c.compress_ratios],
      mlp_layer_types=["hash_moe" if h else "moe" for h in c.is_hash_layer],
      compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
      rope_theta=c.rope_theta, compress_rope_theta=c.compress_rope_theta,
      rope_parameters={"main": {"rope_type": "default", "rope_theta": c.rope_theta,
                                "partial_rotary_factor": c.qk_rope_head_dim / c.head_dim}, "compress": compress},
      norm_topk_prob=True, hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
      dtype=c.param_dtype)
  return d
