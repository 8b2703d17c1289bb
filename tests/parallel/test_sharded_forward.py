"""The tiny target born sharded on 8 devices equals the single-device model: same parameters bit for bit (the
init's random bits do not depend on the sharding), every parameter in its rules sharding, and the same logits
through `jit_forward_sharded` (batch over data/fsdp, experts over `expert`; XLA partitions the MoE itself).

Logits are compared at 1e-5·max|logit|, not bit for bit: sharded matmuls and all-reduces sum in another order.
"""

import os

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from dsv4.configs import load_config, model_config
from dsv4.model.sharded import init_sharded
from dsv4.model.transformer import jit_forward
from dsv4.parallel.forward import jit_forward_sharded
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, ShardingError, state_shardings
from dsv4.parallel.sharded import shard_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = model_config(load_config(os.path.join(ROOT, "configs/target/tiny.py")))
B, T = 8, 128  # T = 128 so the HCA layer pools an entry


def flat(model):
  return {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(model))}


@pytest.fixture(scope="module")
def reference():
  """The single-device model (seed 0) and its logits."""
  model = init_sharded(CFG, make_mesh({}, jax.devices()[:1]), DEFAULT_RULES, seed=0)
  ids = jax.random.randint(jax.random.key(1), (B, T), 0, CFG.vocab_size)
  return model, ids, np.asarray(jit_forward(model)(ids).logits_BTV)


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [{"data": 8}, {"fsdp": 2, "expert": 2, "tensor": 2}, {"expert": 8}],
                         ids=["data8", "fsdp2_expert2_tensor2", "expert8"])
def test_born_sharded_equals_single_device(reference, sizes):
  ref_model, ids, ref_logits = reference
  ref_params = flat(ref_model)
  mesh = make_mesh(sizes)
  model = init_sharded(CFG, mesh, DEFAULT_RULES, seed=0)
  params = flat(model)
  expected = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(model, mesh, DEFAULT_RULES))}
  for path, value in params.items():
    assert value.sharding == expected[path], path
    np.testing.assert_array_equal(np.asarray(value), ref_params[path], err_msg=str(path))
  out = jit_forward_sharded(model, mesh, DEFAULT_RULES)(ids)
  assert out.logits_BTV.sharding.spec == P(("data", "fsdp"), None, None)
  assert out.experts_LBTK.sharding.spec == P(None, ("data", "fsdp"), None, None)
  logits = np.asarray(out.logits_BTV)
  err = np.max(np.abs(logits - ref_logits)) / np.max(np.abs(ref_logits))
  assert err <= 1e-5, err


def test_batch_must_divide_the_batch_axes(reference):
  """A batch of 6 on data=8 fails before compiling, naming the input, its size and the `batch` rule."""
  forward = jit_forward_sharded(reference[0], make_mesh({"data": 8}), DEFAULT_RULES)
  with pytest.raises(ShardingError, match=r"input_ids: dimension 0 \(size 6, logical 'batch'\)"):
    forward(np.zeros((6, 16), np.int32))


def test_shard_model_moves_a_real_model(reference):
  """An allocated single-device model moved onto the mesh: every parameter in its rules sharding, values unchanged."""
  mesh = make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
  model = shard_model(reference[0], mesh, DEFAULT_RULES)
  expected = {p: s.get_value() for p, s in nnx.to_flat_state(state_shardings(model, mesh, DEFAULT_RULES))}
  ref_params = flat(reference[0])
  for path, value in flat(model).items():
    assert value.sharding == expected[path], path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(ref_params[path]))
