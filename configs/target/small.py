"""Small V4-style target for CPU demos: the default target of the demo and the `small` drafter configs.

~9.5M parameters (19 MB in bf16), vocab 8192 (the embedded corpus's BPE): every layer kind (sliding, CSA with
its indexer, HCA), a hash-routed layer, 8 routed experts (top-2) + 1 shared, mHC with 2 streams, one MTP
module. Sized so that pretraining on this 2-core CPU machine reaches a useful target within an hour
(`train_target.py`, see experiments/train_target_small); `:quick` retrains in minutes. Variants: `bf16`, `quick`.
"""

import ml_collections

from dsv4.configs import apply_variants, model_section, variant_names
from dsv4.parallel.config import mesh_section
from dsv4.training.config import data_section, train_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=8192, bos_token_id=1, eos_token_id=2,  # the embedded corpus BPE's <|bos|>, <|eos|> (0 is <|pad|>)
      hidden_size=256, num_hidden_layers=4, num_attention_heads=4, head_dim=64,
      q_lora_rank=96, qk_rope_head_dim=16, o_groups=2, o_lora_rank=64, sliding_window=64,
      compress_ratios=(0, 4, 128, 0),
      yarn=dict(factor=16.0, original_max_position_embeddings=1024, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=4, index_head_dim=32, index_topk=16,
      n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=128,
      routed_scaling_factor=1.5, num_hash_layers=1, hc_mult=2,
      num_nextn_predict_layers=1, max_position_embeddings=16384)
  config.mesh = mesh_section()  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  config.train = train_section(steps=2000, batch_size=8, lr=3e-3, checkpoint_every=100, eval_every=200,
                               eval_batches=16, log_every=10)
  config.data = data_section(seq_len=512)
  variants = variant_names(arg)
  if "quick" in variants:  # the whole pipeline from scratch in minutes: fewer, shorter steps
    config.train.steps, config.train.checkpoint_every, config.train.eval_every = 120, 60, 60
    config.data.seq_len = 256
  apply_variants(config.model, ",".join(v for v in variants if v != "quick") or None, "small.py")
  return config
