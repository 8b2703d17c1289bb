"""Sharding primitives: the mesh from config (mesh.py, config.py), the logical-axis rules table and the shardings it
gives (rules.py), modules born sharded or placed by the rules (sharded.py), the sharded forward (forward.py),
expert dispatch (expert_parallel.py), multi-process start-up (distributed.py).

Below dsv4.model in the layering: nothing here imports the model, the drafters, training or planning (memory
planning and the AOT compile live in dsv4.planning; the target's born-sharded init in dsv4.model.sharded)."""

from dsv4.parallel.forward import jit_forward_sharded
from dsv4.parallel.mesh import MESH_AXES, abstract_mesh, make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, logical_to_spec, rules_with, shardings_fn, state_shardings
from dsv4.parallel.sharded import bind_rules, born_sharded, shard_model

__all__ = ["DEFAULT_RULES", "MESH_AXES", "abstract_mesh", "bind_rules", "born_sharded", "jit_forward_sharded",
           "logical_to_spec", "make_mesh", "rules_with", "shard_model", "shardings_fn", "state_shardings"]

