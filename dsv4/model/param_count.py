"""Parameter counts of a target, total and active per token, from its abstract shapes (nothing allocated).

Groups: embedding, attention (projections, compressor, indexer, sinks, the attention's own q/kv norms),
routed_experts (w_gate/w_up/w_down), shared_experts, router (gate weights), hyper_connections (attn_hc,
ffn_hc, hc_head), norms (pre-norms and final norms), head, mtp (everything under `mtp`), other (anything
this table does not know; nonzero means the table needs updating).

Active per token = everything except routed experts, plus top-k/E of each layer's routed experts (hash
layers also run k experts). The embedding and head count as active, as in DeepSeek's own figures (V3's
37B active includes its 0.9B embedding and 0.9B head).

MTP: DeepSeek's published totals exclude the MTP module (V3: 671B main + 14B MTP = 685B on HF), and the
V4 figures agree: Flash counts 284.3B without MTP vs 290.9B with it. So `total_params`/`active_params`
exclude MTP (`mtp_counted` False) and the `*_with_mtp` figures add it (the MTP shares embedding and head).
Non-trainable FrozenState (router balancing bias, hash tables) is reported apart, in `frozen`.
"""

from __future__ import annotations

import math

from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState

GROUPS = ("embedding", "attention", "routed_experts", "shared_experts", "router", "hyper_connections", "norms",
          "head", "mtp", "other")
MTP_GROUPS = ("attention", "routed_experts", "shared_experts", "router", "hyper_connections", "norms",
              "projections", "other")
ROUTED = ("w_gate", "w_up", "w_down")
MTP_COUNTED = False  # the published totals match the main model without MTP (see the module docstring)

# Published sizes (reference §1.1), matched to a config by its hidden size and depth.
PUBLISHED = {
    "DeepSeek-V4-Flash": dict(hidden_size=4096, num_hidden_layers=43, total=284e9, active=13e9),
    "DeepSeek-V4-Pro": dict(hidden_size=7168, num_hidden_layers=61, total=1.6e12, active=49e9),
}


def _group(names: tuple[str, ...]) -> str:
  """Group of a parameter from its path inside the model, a block or an MTP module (indices removed)."""
  first = names[0]
  if first == "embed":
    return "embedding"
  if first == "lm_head":
    return "head"
  if first == "attn":
    return "attention"
  if first == "ffn":
    sub = names[1] if len(names) > 1 else ""
    return {"shared": "shared_experts", "router": "router"}.get(sub, "routed_experts" if sub in ROUTED else "other")
  if first in ("attn_hc", "ffn_hc", "hc_head"):
    return "hyper_connections"
  if first in ("attn_norm", "ffn_norm", "norm", "enorm", "hnorm"):
    return "norms"
  if first in ("e_proj", "h_proj"):
    return "projections"
  return "other"


def _split_path(path) -> tuple[bool, tuple[str, ...]]:
  """(under mtp?, names inside the block/module): drops `layers.i`, `mtp.k` and an MTP module's `block`."""
  names = tuple(str(p) for p in path)
  in_mtp = names[0] == "mtp"
  if names[0] in ("layers", "mtp"):
    names = names[2:]
  if in_mtp and names and names[0] == "block":
    names = names[1:]
  return in_mtp, names


def count_module(model: nnx.Module, config: ModelConfig) -> dict:
  """Counts a built (real or abstract) Transformer's nnx.Param and FrozenState leaves by group."""
  k_over_e = (config.num_experts_per_tok, config.n_routed_experts)
  main = dict.fromkeys(GROUPS, 0)
  main_active = dict.fromkeys(GROUPS, 0)
  mtp = dict.fromkeys(MTP_GROUPS, 0)
  mtp_active = dict.fromkeys(MTP_GROUPS, 0)
  frozen, param_bytes = {}, 0
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable):
      continue
    value = node.get_value()
    n = math.prod(value.shape)
    in_mtp, names = _split_path(path)
    group = _group(names)
    if isinstance(node, FrozenState):
      key = ("mtp." if in_mtp else "") + ".".join(names)
      frozen_key = key.split(".")[-1]  # bias / tid2eid
      frozen[frozen_key] = frozen.get(frozen_key, 0) + n
      continue
    if not isinstance(node, nnx.Param):
      continue
    param_bytes += n * value.dtype.itemsize
    active = n
    if group == "routed_experts":
      assert value.shape[0] == k_over_e[1], (path, value.shape)
      active = n // k_over_e[1] * k_over_e[0]
    if in_mtp:
      mtp[group if group in mtp else "other"] += n
      mtp_active[group if group in mtp else "other"] += active
    else:
      main[group] += n
      main_active[group] += active
  main["mtp"], main_active["mtp"] = sum(mtp.values()), sum(mtp_active.values())
  total = sum(v for g, v in main.items() if g != "mtp")
  active = sum(v for g, v in main_active.items() if g != "mtp")
  return {
      "total_params": total,
      "active_params": active,
      "total_params_with_mtp": total + main["mtp"],
      "active_params_with_mtp": active + main_active["mtp"],
      "mtp_counted": MTP_COUNTED,
      "breakdown": main,
      "active_breakdown": main_active,
      "mtp_breakdown": mtp,
      "frozen": frozen,
      "param_bytes_with_mtp": param_bytes,
  }


def count_params(config: ModelConfig) -> dict:
  """Counts of `Transformer(config)` built abstractly with nnx.eval_shape: safe for the 1.6T V4-Pro."""
  from dsv4.model.transformer import Transformer  # local: keep this module importable without building

  model = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  return count_module(model, config)


def published_match(config: ModelConfig) -> tuple[str, dict] | None:
  """(name, published figures) of the released model this config's shape matches, if any."""
  for name, pub in PUBLISHED.items():
    if (config.hidden_size, config.num_hidden_layers) == (pub["hidden_size"], pub["num_hidden_layers"]):
      return name, pub
  return None
