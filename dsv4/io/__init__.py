"""Models on disk: the transformers layout (hf.py, hf_config.py, names.py), DeepSeek's native checkpoints with
FP8/FP4 (native_checkpoint.py, quant.py), orbax model checkpoints (checkpoint.py), streaming sharded loading
(sharded_load.py), the one target loader (target.py) and drafter checkpoints (drafter_checkpoint.py)."""
