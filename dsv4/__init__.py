"""dsv4: DSpark speculative-decoding drafters for DeepSeek-V4-style MoE targets, in JAX/Flax NNX."""

from dsv4.model import ConfigError, ModelConfig, TargetOutput, Transformer

__version__ = "0.1.0"


def from_pretrained(path, **kwargs):
  """Loads a transformers-format directory (config.json + safetensors) into a dsv4 Transformer."""
  from dsv4.io.hf import from_pretrained as _load
  return _load(path, **kwargs)


__all__ = ["ConfigError", "ModelConfig", "TargetOutput", "Transformer", "from_pretrained"]
