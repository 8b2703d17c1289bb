"""Builds small random transformers `DeepseekV4ForCausalLM` checkpoints: the independent numerical reference.

transformers initialises sinks, position biases, mHC bases, router biases and hash tables to constants;
`randomize` replaces them with random values so every code path is exercised by the comparison.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

SEQ_LEN = 300  # ≥ 2 HCA entries (ratio 128) and 75 CSA entries (ratio 4), more than index_topk

CONFIGS = {
    # hc_mult 2, 8 experts top-2, sliding → CSA → HCA → CSA, sqrtsoftplus, one hash layer.
    "hc2_e8k2": dict(hc_mult=2, n_routed_experts=8, num_experts_per_tok=2, compress_ratios=[0, 4, 128, 4],
                     num_hash_layers=1, scoring_func="sqrtsoftplus"),
    # hc_mult 4, 16 experts top-4, HCA-first schedule like V4-Pro, sigmoid scoring, two hash layers.
    "hc4_e16k4": dict(hc_mult=4, n_routed_experts=16, num_experts_per_tok=4, compress_ratios=[128, 4, 128, 0],
                      num_hash_layers=2, scoring_func="sigmoid"),
    # hc_mult 3, 6 experts top-3, CSA-heavy, three hash layers, larger routed scaling.
    "hc3_e6k3": dict(hc_mult=3, n_routed_experts=6, num_experts_per_tok=3, compress_ratios=[4, 0, 4, 128, 4],
                     num_hash_layers=3, scoring_func="sqrtsoftplus", routed_scaling_factor=2.5),
}


def make_config(name: str, vocab_size: int = 512) -> DeepseekV4Config:
  kw = dict(CONFIGS[name])
  ratios = kw.pop("compress_ratios")
  return DeepseekV4Config(
      vocab_size=vocab_size, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=len(ratios),
      num_attention_heads=4, head_dim=32, q_lora_rank=48, partial_rotary_factor=16 / 32, sliding_window=32,
      o_groups=2, o_lora_rank=24, index_n_heads=16, index_head_dim=32, index_topk=8, compress_ratios=ratios,
      rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 256,
                       "beta_fast": 32, "beta_slow": 1},
      max_position_embeddings=4096, **{"routed_scaling_factor": 1.5, **kw})


def randomize(model: DeepseekV4ForCausalLM, seed: int) -> None:
  g = torch.Generator().manual_seed(seed)
  cfg = model.config
  with torch.no_grad():
    for name, t in model.state_dict().items():
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "tid2eid":
        rows = [torch.randperm(cfg.n_routed_experts, generator=g)[:cfg.num_experts_per_tok] for _ in range(len(t))]
        t.copy_(torch.stack(rows))
      elif leaf in ("sinks", "position_bias", "base", "hc_base", "e_score_correction_bias"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.5)
      elif leaf in ("scale", "hc_scale"):
        t.copy_(0.5 + torch.rand(t.shape, generator=g))
      elif name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        t.copy_(1 + 0.2 * torch.randn(t.shape, generator=g))
      elif t.is_floating_point():
        t.copy_(torch.randn(t.shape, generator=g) * 0.05)


def build(name: str, seed: int) -> DeepseekV4ForCausalLM:
  torch.manual_seed(seed)
  model = DeepseekV4ForCausalLM(make_config(name)).eval()
  randomize(model, seed)
  return model


def logits(model: DeepseekV4ForCausalLM, ids: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


def self_consistent(model: DeepseekV4ForCausalLM, ids: np.ndarray, full: np.ndarray) -> bool:
  """The reference agrees with itself on prefixes (indexer ties can make it disagree; then pick another seed)."""
  for cut in (ids.shape[1] // 3, 2 * ids.shape[1] // 3):
    prefix = logits(model, ids[:, :cut])
    if np.abs(prefix - full[:, :cut]).max() > 1e-5 * np.abs(full).max():
      return False
  return True
