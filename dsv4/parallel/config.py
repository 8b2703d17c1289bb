"""Config sections for parallelism: `config.mesh` (axis sizes) and `config.rules` (overrides of the rules table).

In a config file:
  config.mesh = mesh_section(fsdp=-1)               # every axis and dcn_<axis> listed, so each is overridable
  config.rules = ()                                 # DEFAULT_RULES; or (("embed", "fsdp"), ("batch", "data"))
On the command line: `--config.mesh.expert=8 --config.mesh.fsdp=-1 --config.rules='(("exp", "expert"),)'`.
"""

from __future__ import annotations

import ml_collections

from dsv4.parallel.mesh import DCN_KEYS, MESH_AXES, check_names, make_mesh
from dsv4.parallel.rules import rules_from_config


def mesh_section(**sizes) -> ml_collections.ConfigDict:
  """All mesh sizes (default: data=1, fsdp=-1 (fill), expert=1, tensor=1, every dcn_<axis>=1) with `sizes` applied."""
  check_names(sizes, "mesh_section")
  return ml_collections.ConfigDict({**{a: 1 for a in MESH_AXES}, "fsdp": -1, **{k: 1 for k in DCN_KEYS}, **sizes})


def mesh_from_config(cfg, devices=None):
  """The Mesh of `cfg.mesh` (absent: one fsdp axis over every device)."""
  return make_mesh(dict(cfg.get("mesh", None) or mesh_section()), devices)


__all__ = ["mesh_section", "mesh_from_config", "rules_from_config"]
