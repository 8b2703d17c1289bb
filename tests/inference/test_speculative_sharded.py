"""The speculative loop on a mesh of 8 fake CPU devices (data = 2 × expert = 4, the rules table's shardings for
the target and the drafter) gives the single-device greedy output token for token."""

import jax
import numpy as np
import pytest

import dsv4
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES
from dsv4.parallel.sharded import shard_model
from tests.inference.spec_fixtures import prompts_of, tiny_drafter, tiny_target

PROMPTS = prompts_of((5, 17, 9, 30), 512)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dspark", "eagle3", "mtpk"])
def test_sharded_equals_single_device(kind):
  want, want_stats = dsv4.speculative_generate(tiny_target(), tiny_drafter(kind), PROMPTS, 16)
  mesh = make_mesh({"data": 2, "expert": 4})
  target = shard_model(tiny_target(), mesh, DEFAULT_RULES)
  drafter = shard_model(tiny_drafter(kind), mesh, DEFAULT_RULES)
  w_gate = target.layers[1].ffn.w_gate[...]
  assert len(w_gate.sharding.device_set) == 8 and w_gate.addressable_shards[0].data.shape[0] == 2  # 8 experts / 4
  with jax.set_mesh(mesh):
    got, stats = dsv4.speculative_generate(target, drafter, PROMPTS, 16)
  assert got == want
  np.testing.assert_array_equal(stats["round_accepted"], want_stats["round_accepted"])
