"""DeepSeek-V4-Pro (1.6T total / 49B active): config.json numbers from secondary copies (reference §1.2).

index_topk: 1024 per the config fixtures; the SinterForge mirror says 512 (sources conflict; the parameter
count does not depend on it). Usage: `--config configs/target/v4_pro.py[:bf16]`; build it abstractly only.
"""

import ml_collections

from dsv4.configs import apply_variants, model_section
from dsv4.parallel.config import mesh_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=129280, hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, head_dim=512,
      q_lora_rank=1536, qk_rope_head_dim=64, o_groups=16, o_lora_rank=1024, sliding_window=128,
      # 2 HCA layers, then CSA/HCA alternating, ending on CSA: 31 HCA + 30 CSA. (The published list has a
      # 62nd, trailing entry for the MTP layer; our MTP block is sliding-only and not part of this schedule.)
      compress_ratios=(128, 128) + (4, 128) * 29 + (4,),
      rope_theta=10000.0, compress_rope_theta=160000.0,
      yarn=dict(factor=16.0, original_max_position_embeddings=65536, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=64, index_head_dim=128, index_topk=1024,
      n_routed_experts=384, n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=3072,
      scoring_func="sqrtsoftplus", routed_scaling_factor=2.5, num_hash_layers=3, swiglu_limit=10.0,
      hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6,
      num_nextn_predict_layers=1, max_position_embeddings=1048576)
  config.mesh = mesh_section(expert=64)  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  apply_variants(config.model, arg, "v4_pro.py")
  return config
