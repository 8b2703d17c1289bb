"""DeepSeek-V4-Flash (284B total / 13B active): the published config.json numbers.

Usage: `--config configs/target/v4_flash.py[:bf16]`. Build it abstractly (nnx.eval_shape): it does not fit
one host in fp32.
"""

import ml_collections

from dsv4.configs import apply_variants, model_section
from dsv4.parallel.config import mesh_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=129280, hidden_size=4096, num_hidden_layers=43, num_attention_heads=64, head_dim=512,
      q_lora_rank=1024, qk_rope_head_dim=64, o_groups=8, o_lora_rank=1024, sliding_window=128,
      # 2 sliding-only layers, then CSA/HCA alternating, ending on CSA.
      compress_ratios=(0, 0) + (4, 128) * 20 + (4,),
      rope_theta=10000.0, compress_rope_theta=160000.0,
      yarn=dict(factor=16.0, original_max_position_embeddings=65536, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=64, index_head_dim=128, index_topk=512,
      n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=2048,
      scoring_func="sqrtsoftplus", routed_scaling_factor=1.5, num_hash_layers=3, swiglu_limit=10.0,
      hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6, rms_norm_eps=1e-6,
      num_nextn_predict_layers=1, max_position_embeddings=1048576)
  config.mesh = mesh_section(expert=8)  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  apply_variants(config.model, arg, "v4_flash.py")
  return config
