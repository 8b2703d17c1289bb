"""The target born sharded: `Transformer(config)` initialised inside one jit in the rules' shardings.

The placement itself is dsv4.parallel.sharded (generic over modules); this is the target's entry point, and it
binds the rules to the model's expert dispatch as well.
"""

from __future__ import annotations

from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.transformer import Transformer
from dsv4.parallel.sharded import born_sharded


def init_sharded(config: ModelConfig, mesh, rules, seed: int = 0, fallback: str | None = None) -> Transformer:
  """`Transformer(config, rngs=nnx.Rngs(seed))` with every variable created in its rules sharding."""
  return born_sharded(lambda: Transformer(config, rngs=nnx.Rngs(seed)), mesh, rules, fallback)
