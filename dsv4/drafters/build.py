"""One entry point from a DrafterConfig to a drafter module, whatever its kind, born in its shardings.

Initialisation runs as one jitted function (eager NNX init would dispatch and compile every op on its own),
with the parameters created directly in their shardings when a mesh is given. The MTP drafter starts from
the target's own MTP module, so it needs the target's arrays.
"""

from __future__ import annotations

import jax
from flax import nnx

from dsv4.drafters.config import DrafterConfig
from dsv4.model.config import ModelConfig
from dsv4.parallel.rules import state_shardings
from dsv4.parallel.sharded import bind_rules, shard_model


def drafter_class(kind: str):
  if kind == "dspark":
    from dsv4.drafters.dspark import DSpark
    return DSpark
  if kind == "eagle3":
    from dsv4.drafters.eagle3 import Eagle3
    return Eagle3
  if kind == "mtp":
    from dsv4.drafters.mtp import MTPDrafter
    return MTPDrafter
  raise ValueError(f"drafter.kind {kind!r} has no implementation.")


def abstract_drafter(cfg: DrafterConfig, target_cfg: ModelConfig, seed: int = 0) -> nnx.Module:
  cls = drafter_class(cfg.kind)
  return nnx.eval_shape(lambda: cls(cfg, target_cfg, rngs=nnx.Rngs(seed)))


def build_drafter(cfg: DrafterConfig, target_cfg: ModelConfig, *, seed: int = 0, target=None, mesh=None,
                  rules=None) -> nnx.Module:
  """A freshly initialised drafter (for kind "mtp", a copy of `target`'s MTP module, which is then required)."""
  cfg.check_against_target(target_cfg)
  cls = drafter_class(cfg.kind)
  if cfg.kind == "mtp":
    if target is None:
      raise ValueError("drafter.kind='mtp' starts from the target's MTP module: pass the target.")
    drafter = cls.from_target(cfg, target)
    if mesh is not None:
      drafter = shard_model(drafter, mesh, rules)
    return drafter
  make = lambda: cls(cfg, target_cfg, rngs=nnx.Rngs(seed))
  graphdef, abstract = nnx.split(nnx.eval_shape(make))
  out_shardings = None
  if mesh is not None:
    out_shardings = state_shardings(abstract, mesh, rules)
  drafter = nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()), out_shardings=out_shardings)())
  return drafter if mesh is None else bind_rules(drafter, rules)  # v4 layers' expert dispatch follows the rules
