"""dsv4: DSpark speculative-decoding drafters for DeepSeek-V4-style MoE targets, in JAX/Flax NNX.

Layering (imports flow one way; tests/test_layering.py checks it): errors, sampling, kernels ← parallel ← model ←
drafters ← io (loading, and the one family switch dsv4.io.family) ← inference / data ← training ← planning.
Errors: dsv4.errors (one base, Dsv4Error). Shape letters in names (`logits_BTV`): dsv4.glossary.
"""

from dsv4.errors import CheckpointError, ConfigError, DataError, Dsv4Error, TargetError, TrainingError
from dsv4.model import ModelConfig, TargetOutput, Transformer

__version__ = "0.1.0"


def from_pretrained(path, **kwargs):
  """A target from a transformers-format directory (config.json + safetensors), its family picked by
  config.json's `model_type` (deepseek_v4 → Transformer; llama, qwen2, qwen3 → DenseTransformer); see
  dsv4.io.family."""
  from dsv4.io.family import from_pretrained as _load
  return _load(path, **kwargs)


def generate(model, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0, eos_id=None,
             prompt_bucket=1):
  """New tokens per prompt; the whole decode loop runs in one jit (see dsv4.inference.generate)."""
  from dsv4.inference.generate import generate as _generate
  return _generate(model, prompts, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                   eos_id=eos_id, prompt_bucket=prompt_bucket)


def speculative_generate(target, drafter, prompts, max_new_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=0,
                         eos_id=None, block_size=None, prompt_bucket=1):
  """(new tokens per prompt, stats): draft → verify → accept in one jit, lossless against `generate` (see
  dsv4.inference.speculative for the round structure and the stats' definitions)."""
  from dsv4.inference.speculative import speculative_generate as _spec
  return _spec(target, drafter, prompts, max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
               seed=seed, eos_id=eos_id, block_size=block_size, prompt_bucket=prompt_bucket)


def load_drafter(path, target=None):
  """A trained drafter (train_drafter.py workdir or checkpoint) bound to its target: the one recorded in the
  checkpoint when `target` is None, else `target` after checking it fits (see dsv4.io.drafter_checkpoint)."""
  from dsv4.io.drafter_checkpoint import load_drafter as _load
  return _load(path, target)


__all__ = ["CheckpointError", "ConfigError", "DataError", "Dsv4Error", "TargetError", "TrainingError", "ModelConfig",
           "TargetOutput", "Transformer", "from_pretrained", "generate", "load_drafter", "speculative_generate"]
