"""The drafter half of a train_drafter plan: its exact parts equal what is really allocated and what XLA counts.

- parameters, other variables and AdamW state per device equal the shard bytes of device 0 of a drafter really
  built in its shardings (build_drafter) and of its optimizer state initialised in the loop's shardings;
- the AOT-compiled offline-features step's argument bytes (XLA's own accounting) equal the planner's drafter state
  + batch + cached features + the target's embedding and head + the step counter.
"""

import functools

import jax
import ml_collections
import numpy as np
from flax import nnx

from dsv4.drafters.build import build_drafter
from dsv4.drafters.config import DrafterConfig
from dsv4.model.param_count import abstract_model
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, shard_bytes, state_shardings
from dsv4.planning import plan_drafter
from dsv4.planning.distill_aot import cache_features, lower_train_step, memory
from dsv4.training import train_state
from dsv4.training.optimizer import make_optimizer
from tests.training.test_distill_step import TARGET

MESH = {"fsdp": 2, "expert": 2, "tensor": 2}
DRAFTER = DrafterConfig(layer_type="v4", block_size=4, num_layers=2, hidden_size=32, num_attention_heads=4,
                        num_key_value_heads=2, head_dim=8, target_layer_ids=(0, 2), markov_rank=8, n_routed_experts=4,
                        num_experts_per_tok=2, moe_intermediate_size=16, hc_mult=2, sliding_window=6)
TRAIN = ml_collections.ConfigDict({"lr": 1e-3, "steps": 10, "cache_dtype": "bfloat16"})
B, T, A = 4, 32, 6


def device0_bytes(tree) -> int:
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device.id == 0)


@functools.cache
def mesh():
  return make_mesh(MESH)


def test_state_bytes_equal_a_real_sharded_drafter_and_its_adamw_state():
  drafter = build_drafter(DRAFTER, TARGET, seed=0, mesh=mesh(), rules=DEFAULT_RULES)
  _, params, rest = nnx.split(drafter, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  optimizer = make_optimizer(TRAIN)
  p_sh = jax.tree.map(lambda x: x.sharding, params)
  opt = jax.jit(optimizer.init, out_shardings=train_state.optimizer_shardings(optimizer, params, p_sh, mesh()))(params)
  planned = plan_drafter.state_per_device(DRAFTER, TARGET, TRAIN, mesh(), DEFAULT_RULES)
  assert planned == {"params": device0_bytes(params), "rest": device0_bytes(rest), "optimizer": device0_bytes(opt)}
  assert planned["params"] < sum(x.nbytes for x in jax.tree.leaves(params)) / 2  # really sharded


def test_aot_offline_step_arguments_equal_the_planned_state_and_batch():
  compiled = lower_train_step(DRAFTER, TARGET, TRAIN, mesh(), DEFAULT_RULES, batch=B, seq=T, max_blocks=A,
                              features="offline").compile()
  planned = plan_drafter.state_per_device(DRAFTER, TARGET, TRAIN, mesh(), DEFAULT_RULES)
  batch = plan_drafter.batch_per_device(B, T, A, mesh(), DEFAULT_RULES)
  b_d = B // 2  # batch over data·fsdp = 2
  features = sum(b_d * T * int(np.prod(shape)) * dtype.itemsize
                 for shape, dtype in cache_features(DRAFTER, TARGET, ("taps",), "bfloat16").values())
  target = abstract_model(TARGET)
  t_params = nnx.to_pure_dict(nnx.state(target, nnx.Param))
  t_sh = nnx.to_pure_dict(state_shardings(nnx.state(target, nnx.Param), mesh(), DEFAULT_RULES))
  head = sum(shard_bytes(t_params[k].shape, t_params[k].dtype, t_sh[k]) for k in ("embed", "lm_head"))
  want = planned["params"] + planned["rest"] + planned["optimizer"] + batch + features + head + 4  # + the step
  assert memory(compiled)["argument_bytes"] == want


def test_plan_mesh_adds_the_drafter_and_refuses_it_for_serving():
  import json
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  cmd = [sys.executable, "scripts/plan_mesh.py", "--config", "configs/target/tiny.py", "--drafter",
         "configs/drafter/dspark.py:tiny", "--batch", "4", "--seq", "64", "--mesh", "fsdp=2,tensor=2", "--job"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(cmd + ["train_drafter"], cwd=root, env=env, capture_output=True, text=True, check=True).stdout
  p = json.loads(out.strip().splitlines()[-1])
  # fp32 AdamW: μ and ν like the parameters, plus the replicated step counts
  assert p["drafter_params_bytes"] > 0 and 0 < p["optimizer_bytes"] - 2 * p["drafter_params_bytes"] <= 16
  assert p["bytes_per_device"] == (p["params_bytes"] + p["drafter_params_bytes"] + p["optimizer_bytes"]
                                   + p["batch_bytes"] + p["activation_bytes"])
  bad = subprocess.run(cmd + ["serve"], cwd=root, env=env, capture_output=True, text=True)
  assert bad.returncode != 0 and "--drafter sizes a drafter in training" in bad.stderr
