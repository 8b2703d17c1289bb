"""Parameter counts of a dense target (built or abstract): every parameter is active for every token except the
embedding table, of which a token reads one row; a tied head is that same table, counted once, under `embedding`
in the total and as the head in the active count (its matmul reads all of it)."""

from __future__ import annotations

import math

from flax import nnx

GROUPS = ("embedding", "attention", "mlp", "norms", "head", "other")


def _group(names: tuple[str, ...]) -> str:
  if names[0] == "embed":
    return "embedding"
  if names[0] == "lm_head":
    return "head"
  if names[0] == "norm" or (names[0] == "layers" and names[2].endswith("layernorm")):
    return "norms"
  if names[0] == "layers":
    return {"self_attn": "attention", "mlp": "mlp"}.get(names[2], "other")
  return "other"


def count_dense(model) -> dict:
  breakdown = dict.fromkeys(GROUPS, 0)
  param_bytes = 0
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    value = var.get_value()
    n = math.prod(value.shape)
    breakdown[_group(tuple(str(p) for p in path))] += n
    param_bytes += n * value.dtype.itemsize
  total = sum(breakdown.values())
  active = total - breakdown["embedding"] + (breakdown["embedding"] if model.config.tie_word_embeddings else 0)
  active_breakdown = {**breakdown, "embedding": 0}
  if model.config.tie_word_embeddings:
    active_breakdown["head"] = breakdown["embedding"]
  return {"total_params": total, "active_params": active, "breakdown": breakdown,
          "active_breakdown": active_breakdown, "tied_embeddings": model.config.tie_word_embeddings,
          "param_bytes": param_bytes}
