"""Parameter counts of a target, total and active per token, from its abstract shapes (nothing allocated).

Groups: embedding, attention (projections, compressor, indexer, sinks, the attention's own q/kv norms),
routed_experts (w_gate/w_up/w_down), shared_experts, router (gate weights), hyper_connections (attn_hc,
ffn_hc, hc_head), norms (pre-norms and final norms), head, mtp (everything under `mtp`), other (a parameter
this table does not know; nonzero means the table needs updating).

Conventions, chosen to reproduce DeepSeek's published V3 figures (README_WEIGHTS: 671B main model,
"36.6B activated, including 0.9B for the output head"; our formula gives 671.0B and 36.63B):
- total counts every trainable parameter of the main model, embedding included;
- active per token = everything except the embedding table (a lookup reads one row) and the routed experts,
  plus top-k/E of each layer's routed experts (hash layers also run k experts). `active_params_incl_embedding`
  adds the table back;
- MTP is excluded (V3: 671B main + 14B MTP = 685B on HF), so `mtp_counted` is False; the `*_with_mtp`
  figures add the MTP module's own parameters (it shares the embedding and head).
Non-trainable FrozenState (router balancing bias, hash tables) is reported apart, in `frozen`.
"""

from __future__ import annotations

import math

from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState

GROUPS = ("embedding", "attention", "routed_experts", "shared_experts", "router", "hyper_connections", "norms",
          "head", "other")
MTP_GROUPS = ("attention", "routed_experts", "shared_experts", "router", "hyper_connections", "norms",
              "projections", "other")
MTP_COUNTED = False

# Published sizes (reference §1.1), matched to a config by hidden size and depth.
PUBLISHED = {
    "DeepSeek-V4-Flash": dict(hidden_size=4096, num_hidden_layers=43, total=284e9, active=13e9),
    "DeepSeek-V4-Pro": dict(hidden_size=7168, num_hidden_layers=61, total=1.6e12, active=49e9),
}


def _group(names: tuple[str, ...]) -> str:
  """Group of a parameter from its path inside the model, a block or an MTP module (indices removed)."""
  first, sub = names[0], (names[1] if len(names) > 1 else "")
  if first == "ffn":
    if sub in ("w_gate", "w_up", "w_down"):
      return "routed_experts"
    return {"shared": "shared_experts", "router": "router"}.get(sub, "other")
  return {"embed": "embedding", "lm_head": "head", "attn": "attention", "attn_hc": "hyper_connections",
          "ffn_hc": "hyper_connections", "hc_head": "hyper_connections", "attn_norm": "norms", "ffn_norm": "norms",
          "norm": "norms", "enorm": "norms", "hnorm": "norms", "e_proj": "projections",
          "h_proj": "projections"}.get(first, "other")


def _split_path(path) -> tuple[bool, tuple[str, ...]]:
  """(under mtp?, names inside the block/module): drops `layers.i`, `mtp.k` and an MTP module's `block`."""
  names = tuple(str(p) for p in path)
  in_mtp = names[0] == "mtp"
  if names[0] in ("layers", "mtp"):
    names = names[2:]
  if in_mtp and names[0] == "block":
    names = names[1:]
  return in_mtp, names


def count_module(model: nnx.Module, config: ModelConfig) -> dict:
  """Counts a built (real or abstract) Transformer's nnx.Param and FrozenState leaves by group."""
  main, main_active = dict.fromkeys(GROUPS, 0), dict.fromkeys(GROUPS, 0)
  mtp, mtp_active = dict.fromkeys(MTP_GROUPS, 0), dict.fromkeys(MTP_GROUPS, 0)
  frozen, param_bytes = {}, 0
  for path, node in nnx.iter_graph(model):
    if not isinstance(node, nnx.Variable):
      continue
    value = node.get_value()
    n = math.prod(value.shape)
    in_mtp, names = _split_path(path)
    if isinstance(node, FrozenState):
      key = ("mtp." if in_mtp else "") + names[-1]  # bias | tid2eid
      frozen[key] = frozen.get(key, 0) + n
      continue
    if not isinstance(node, nnx.Param):
      continue
    param_bytes += n * value.dtype.itemsize
    group = _group(names)
    active = n
    if group == "routed_experts":
      assert value.shape[0] == config.n_routed_experts, (path, value.shape)
      active = n // config.n_routed_experts * config.num_experts_per_tok
    elif group == "embedding":
      active = 0
    totals, actives = (mtp, mtp_active) if in_mtp else (main, main_active)
    group = group if group in totals else "other"
    totals[group] += n
    actives[group] += active
  total, active = sum(main.values()), sum(main_active.values())
  mtp_total, mtp_act = sum(mtp.values()), sum(mtp_active.values())
  return {
      "total_params": total,
      "active_params": active,
      "total_params_with_mtp": total + mtp_total,
      "active_params_with_mtp": active + mtp_act,
      "active_params_incl_embedding": active + main["embedding"],
      "mtp_counted": MTP_COUNTED,
      "breakdown": {**main, "mtp": mtp_total},
      "active_breakdown": {**main_active, "mtp": mtp_act},
      "mtp_breakdown": mtp,
      "frozen": frozen,
      "param_bytes_with_mtp": param_bytes,
  }


def abstract_model(config: ModelConfig) -> nnx.Module:
  """`Transformer(config)` with ShapeDtypeStruct leaves (nnx.eval_shape): nothing allocated."""
  from dsv4.model.transformer import Transformer  # local: importing this module builds nothing

  return nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))


def count_params(config: ModelConfig) -> dict:
  """Counts of `Transformer(config)` built abstractly: safe (about 2 s) for the 1.6T V4-Pro."""
  return count_module(abstract_model(config), config)


def published_match(config: ModelConfig) -> tuple[str, dict] | None:
  """(name, published figures) of the released model this config's shape matches, if any."""
  for name, pub in PUBLISHED.items():
    if (config.hidden_size, config.num_hidden_layers) == (pub["hidden_size"], pub["num_hidden_layers"]):
      return name, pub
  return None


def human(n: float) -> str:
  """1572997179491 → '1.573T'."""
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
    if abs(n) >= scale:
      return f"{n / scale:.4g}{unit}"
  return str(int(n))


def summary(counts: dict, config: ModelConfig) -> str:
  """A readable table of `count_params` output, totals with and without MTP, and the published comparison."""
  total, b, ab = counts["total_params"], counts["breakdown"], counts["active_breakdown"]
  lines = [f"{'group':<20}{'params':>12}{'active/token':>14}{'% of total':>12}"]
  for g in (*GROUPS, "mtp"):
    if g == "other" and not b[g]:
      continue
    lines.append(f"{g:<20}{human(b[g]):>12}{human(ab[g]):>14}{100 * b[g] / total:>11.2f}%")
  lines += [
      "",
      f"total (main model, MTP not counted): {human(total)} ({total:,})",
      f"active per token (main model):       {human(counts['active_params'])} ({counts['active_params']:,}); "
      f"with the embedding table {human(counts['active_params_incl_embedding'])}",
      f"total with MTP:                      {human(counts['total_params_with_mtp'])} "
      f"({counts['total_params_with_mtp']:,})",
      f"active per token with MTP:           {human(counts['active_params_with_mtp'])}",
      f"non-trainable state (FrozenState):   {', '.join(f'{k} {human(v)}' for k, v in counts['frozen'].items())}",
      f"parameter memory incl. MTP:          {counts['param_bytes_with_mtp'] / 2**30:.2f} GiB at "
      f"param_dtype={config.param_dtype} (mHC, norms, router, sinks stay fp32)",
      "MTP counted in total_params/active_params: no. DeepSeek's published figures exclude MTP and count the "
      "head but not the embedding table as active (V3: 671B / 36.6B; this formula gives 671.0B / 36.6B). V4-Flash's "
      "284B (3 figures) agrees only without MTP; V4-Pro's 1.6T (2 figures) fits either.",
  ]
  match = published_match(config)
  if match:
    name, pub = match
    lines.append(f"vs published {name} ({human(pub['total'])} / {human(pub['active'])} active): "
                 f"total {100 * (total / pub['total'] - 1):+.2f}% "
                 f"(with MTP {100 * (counts['total_params_with_mtp'] / pub['total'] - 1):+.2f}%), "
                 f"active {100 * (counts['active_params'] / pub['active'] - 1):+.2f}% "
                 f"(with MTP {100 * (counts['active_params_with_mtp'] / pub['active'] - 1):+.2f}%, "
                 f"incl. embedding {100 * (counts['active_params_incl_embedding'] / pub['active'] - 1):+.2f}%).")
  return "\n".join(lines)
