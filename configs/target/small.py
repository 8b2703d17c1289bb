"""Small V4-style target for CPU demos (~25M params, vocab 8192): every layer kind, a hash-routed layer,
16 routed experts (top-2) + 1 shared, mHC with 4 streams, one MTP module. Variant `:bf16`.
"""

import ml_collections

from dsv4.configs import apply_variants, model_section
from dsv4.parallel.config import mesh_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=8192, hidden_size=256, num_hidden_layers=6, num_attention_heads=4, head_dim=128,
      q_lora_rank=128, qk_rope_head_dim=32, o_groups=2, o_lora_rank=128, sliding_window=64,
      compress_ratios=(0, 4, 128, 4, 128, 4),
      yarn=dict(factor=16.0, original_max_position_embeddings=1024, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=8, index_head_dim=32, index_topk=16,
      n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=256,
      routed_scaling_factor=1.5, num_hash_layers=1, hc_mult=4,
      num_nextn_predict_layers=1, max_position_embeddings=16384)
  config.mesh = mesh_section()  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  apply_variants(config.model, arg, "small.py")
  return config
