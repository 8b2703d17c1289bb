"""The rules drive the streaming loader: `shardings_fn(mesh, rules)` is what dsv4.io.sharded_load.load_sharded takes,
and every loaded parameter lands in its rules sharding with the values of an unsharded load."""

import numpy as np
from flax import nnx

from dsv4.io.sharded_load import load_sharded
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, shardings_fn, state_shardings
from tests.io import quant_reference as ref


def test_load_sharded_by_rules(tmp_path):
  cfg = ref.tiny_config()
  ref.write_model_dir(cfg, ref.random_native(cfg), tmp_path)
  mesh = make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
  model = load_sharded(tmp_path, shardings_fn(mesh, DEFAULT_RULES))
  full = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(load_sharded(tmp_path)))}
  expected = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(model, mesh, DEFAULT_RULES))}
  sharded = 0
  for path, var in nnx.to_flat_state(nnx.state(model)):
    value = var.get_value()
    assert value.sharding == expected[path], path
    np.testing.assert_array_equal(np.asarray(value), full[path], err_msg=str(path))
    sharded += not value.sharding.is_fully_replicated
  assert sharded > 20
