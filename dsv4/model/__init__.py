"""Target models: DeepSeek-V4 (`Transformer`) and the dense Llama/Qwen family (`DenseTransformer`), behind one
target interface (dsv4.model.target)."""

from dsv4.model.config import ModelConfig, YarnConfig
from dsv4.model.dense import DenseTransformer
from dsv4.model.dense_config import DenseConfig
from dsv4.model.transformer import TargetOutput, Transformer

__all__ = ["DenseConfig", "DenseTransformer", "ModelConfig", "YarnConfig", "TargetOutput", "Transformer"]
