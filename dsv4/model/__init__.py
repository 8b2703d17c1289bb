"""The DeepSeek-V4-style target model."""

from dsv4.model.config import ConfigError, ModelConfig, YarnConfig
from dsv4.model.transformer import TargetOutput, Transformer

__all__ = ["ConfigError", "ModelConfig", "YarnConfig", "TargetOutput", "Transformer"]
