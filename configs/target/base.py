"""Base V4-style target for one accelerator (~2B params, ~0.5B active), on V4's 129280-token vocabulary so
the real tokenizer fits: Flash's layer pattern at 16 layers, 64 routed experts (top-6) + 1 shared, 3 hash
layers, mHC with 4 streams, one MTP module. Variant `:bf16` (bfloat16 params and compute).
"""

import ml_collections

from dsv4.configs import apply_variants, model_section
from dsv4.parallel.config import mesh_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=129280, hidden_size=1024, num_hidden_layers=16, num_attention_heads=16, head_dim=256,
      q_lora_rank=512, qk_rope_head_dim=64, o_groups=4, o_lora_rank=512, sliding_window=128,
      compress_ratios=(0, 0) + (4, 128) * 7,
      yarn=dict(factor=16.0, original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=16, index_head_dim=64, index_topk=256,
      n_routed_experts=64, n_shared_experts=1, num_experts_per_tok=6, moe_intermediate_size=512,
      routed_scaling_factor=1.5, num_hash_layers=3, hc_mult=4,
      num_nextn_predict_layers=1, max_position_embeddings=65536)
  config.mesh = mesh_section()  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  apply_variants(config.model, arg, "base.py")
  return config
