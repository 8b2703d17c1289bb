"""Sharding across meshes: the mesh from config (mesh.py), the logical-axis rules table and the shardings it gives
(rules.py), born-sharded models (sharded.py), the sharded forward (forward.py), memory planning (plan.py)."""

from dsv4.parallel.forward import jit_forward_sharded
from dsv4.parallel.mesh import MESH_AXES, abstract_mesh, make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, logical_to_spec, rules_with, shardings_fn, state_shardings
from dsv4.parallel.sharded import init_sharded, shard_model

__all__ = ["DEFAULT_RULES", "MESH_AXES", "abstract_mesh", "init_sharded", "jit_forward_sharded", "logical_to_spec",
           "make_mesh", "rules_with", "shard_model", "shardings_fn", "state_shardings"]
