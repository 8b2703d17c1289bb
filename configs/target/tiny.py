"""Tiny V4-style target for tests (~0.4M params): every layer kind (sliding, CSA, HCA), a hash-routed layer,
mHC with 4 streams and one MTP module, at sizes meant for CPU tests. Not instant: the 150 training steps the
tiny drafter configs ask for took 9 minutes (about 2.9 s a step) on a loaded 2-core machine.

HCA (ratio 128) only produces compressed entries from 128 tokens on, so tests of it need T ≥ 128.
"""

import ml_collections

from dsv4.configs import apply_variants, model_section
from dsv4.parallel.config import mesh_section
from dsv4.training.config import data_section, train_section


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.model = model_section(
      vocab_size=512, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, head_dim=32,
      q_lora_rank=48, qk_rope_head_dim=16, o_groups=2, o_lora_rank=32, sliding_window=16,
      compress_ratios=(0, 4, 128, 4),
      yarn=dict(factor=16.0, original_max_position_embeddings=256, beta_fast=32.0, beta_slow=1.0),
      index_n_heads=16, index_head_dim=16, index_topk=4,
      n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=32,
      routed_scaling_factor=1.5, num_hash_layers=1, hc_mult=4,
      num_nextn_predict_layers=1, max_position_embeddings=4096)
  config.mesh = mesh_section()  # fsdp=-1 fills the remaining devices
  config.rules = ()  # overrides of dsv4.parallel.rules.DEFAULT_RULES
  config.train = train_section(steps=200, batch_size=8, checkpoint_every=50, eval_every=50, eval_batches=8)
  # The embedded corpus with its own 512-token BPE (the model's vocabulary).
  config.data = data_section(corpus_dir="data/stdlib_corpus_v512", corpus_vocab_size=512, seq_len=256)
  apply_variants(config.model, arg, "tiny.py")
  return config
