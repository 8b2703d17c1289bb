"""The rules table: it covers the model's logical names, resolves specs (a repeated mesh axis is dropped), and fails
naming the logical axis or the parameter; on the small target every parameter over 1 MiB is sharded."""

import logging
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.configs import load_config, model_config
from dsv4.errors import ConfigError, ShardingError
from dsv4.model.layers import FrozenState, param
from dsv4.model.param_count import abstract_model
from dsv4.parallel import rules as rules_lib
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, logical_to_spec, state_shardings
from dsv4.parallel.sharded import shard_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH_222 = {"fsdp": 2, "expert": 2, "tensor": 2}


def abstract(name):
  return abstract_model(model_config(load_config(os.path.join(ROOT, f"configs/target/{name}.py"))))


@pytest.fixture(scope="module")
def small():
  return abstract("small")


def test_every_logical_name_has_a_rule(small):
  names = {a for _, v in nnx.to_flat_state(nnx.state(small)) for a in v.get_metadata()["out_sharding"]}
  assert names - {None} <= set(dict(DEFAULT_RULES))
  assert {"embed", "vocab", "heads", "kv", "q_lora", "o_lora", "o_groups", "mlp", "exp", "norm"} <= names
  assert {"batch", "seq", "cache_batch", "cache_seq"} <= set(dict(DEFAULT_RULES))


def test_specs_drop_a_repeated_mesh_axis():
  assert logical_to_spec(("exp", "embed", "mlp"), DEFAULT_RULES) == P("expert", "fsdp", "tensor")
  assert logical_to_spec(("embed", "q_lora"), DEFAULT_RULES) == P(("fsdp", "expert"), None)
  assert logical_to_spec(("o_groups", "heads", "o_lora"), DEFAULT_RULES) == P("tensor", None, ("fsdp", "expert"))
  assert logical_to_spec((None, "kv"), DEFAULT_RULES) == P(None, None)


def test_unknown_logical_name_is_named():
  with pytest.raises(ConfigError, match="'kv_heads' has no rule"):
    logical_to_spec(("embed", "kv_heads"), DEFAULT_RULES)


def test_overrides():
  rules = rules_lib.rules_with((("embed", "fsdp"), ("draft_heads", ("tensor", "expert"))))
  assert dict(rules)["embed"] == "fsdp" and dict(rules)["draft_heads"] == ("tensor", "expert")
  assert dict(rules)["exp"] == "expert"  # untouched
  with pytest.raises(ConfigError, match="rule 'embed': mesh axis 'fsbp'"):
    rules_lib.rules_with((("embed", "fsbp"),))
  cfg = ml_collections.ConfigDict({"rules": (("batch", "data"), ("kv", None))})
  assert dict(rules_lib.rules_from_config(cfg))["batch"] == "data"
  assert rules_lib.rules_from_config(ml_collections.ConfigDict({"rules": ()})) == rules_lib.rules_with(())
  assert rules_lib.parse_rules("cache_batch=data+fsdp,kv=none") == (("cache_batch", ("data", "fsdp")), ("kv", None))


class Toy(nnx.Module):
  def __init__(self):
    keys = nnx.Rngs(0)
    self.w = param(keys, (6, 4), ("embed", None))
    self.table = FrozenState(jnp.zeros((16, 2), jnp.int32), out_sharding=("vocab", None), eager_sharding=False)
    self.plain = nnx.Param(jnp.zeros((8,)))  # no logical axes: replicated


def test_divisibility_error_names_the_parameter(caplog):
  mesh = make_mesh({"fsdp": 4, "tensor": 2})
  with pytest.raises(ShardingError) as e:
    state_shardings(Toy(), mesh, DEFAULT_RULES)
  msg = str(e.value)
  for part in ("w:", "dimension 0", "size 6", "'embed'", "('fsdp', 'expert')", "fallback='replicate'"):
    assert part in msg, (part, msg)
  with caplog.at_level(logging.WARNING):
    sh = state_shardings(Toy(), mesh, DEFAULT_RULES, fallback="replicate")
  assert sh["w"].get_value().spec == P(None, None) and "replicating" in caplog.text
  assert sh["table"].get_value().spec == P("tensor", None)  # FrozenState follows its metadata too
  assert sh["plain"].get_value().spec == P()


def test_real_model_error_names_the_path():
  """tiny has o_groups=2: a tensor axis of 8 cannot split it."""
  with pytest.raises(ShardingError, match=r"layers\.0\.attn\.o_a_proj: dimension 0 \(size 2, logical 'o_groups'\)"):
    state_shardings(abstract("tiny"), make_mesh({"tensor": 8}), DEFAULT_RULES)


def test_small_params_over_1mib_are_sharded(small):
  """From the specs alone (nothing allocated): every variable of 1 MiB or more splits over a mesh axis of size > 1."""
  mesh = make_mesh(MESH_222)
  shardings = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(small, mesh, DEFAULT_RULES))}
  big = 0
  for path, var in nnx.to_flat_state(nnx.state(small)):
    value, sharding = var.get_value(), shardings[path]
    if math.prod(value.shape) * value.dtype.itemsize < 2**20:
      continue
    big += 1
    shard = math.prod(sharding.shard_shape(value.shape))
    assert shard < math.prod(value.shape), (path, sharding.spec)
  assert big >= 10  # embed, lm_head, and every layer's three expert stacks
  expert = shardings[("layers", 1, "ffn", "w_gate")]
  assert expert.spec == P("expert", "fsdp", "tensor") and expert.shard_shape((8, 256, 128)) == (4, 128, 64)


def test_sharded_load_form_and_abstract_shard_model(small):
  mesh = make_mesh(MESH_222)
  fn = rules_lib.shardings_fn(mesh, DEFAULT_RULES)
  state = nnx.state(small)
  expected = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(state, mesh, DEFAULT_RULES))}
  assert all(fn(tuple(p), v) == expected[p] for p, v in nnx.to_flat_state(state))
  placed = nnx.state(shard_model(small, mesh, DEFAULT_RULES))
  for p, v in nnx.to_flat_state(placed):
    leaf = v.get_value()
    assert isinstance(leaf, jax.ShapeDtypeStruct) and isinstance(leaf.sharding, NamedSharding)
    assert leaf.sharding == expected[p]
