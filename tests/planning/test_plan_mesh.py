"""plan_mesh: its last line is JSON; on a mesh of 1 its parameter bytes equal count_params' counts × 4 bytes (an
independent count); the decode cache equals init_state's bytes and splits over `data`."""

import json
import math
import os
import subprocess
import sys

import jax

from dsv4.configs import load_config, model_config
from dsv4.model.decode import init_state
from dsv4.model.param_count import abstract_model, count_params
from dsv4.parallel.mesh import abstract_mesh
from dsv4.parallel.rules import DEFAULT_RULES
from dsv4.planning import plan as plan_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(name):
  return model_config(load_config(os.path.join(ROOT, f"configs/target/{name}.py")))


def test_script_json_and_param_bytes_on_one_device():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "scripts/plan_mesh.py", "--config", "configs/target/tiny.py", "--device",
                        "v5e", "--job", "serve", "--batch", "2", "--seq", "256"],
                       cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  counts = count_params(config("tiny"))  # fp32 config: every parameter and frozen entry is 4 bytes
  assert result["params_bytes"] == 4 * (counts["total_params_with_mtp"] + sum(counts["frozen"].values()))
  assert result["mesh"] == {"data": 1, "fsdp": 1, "expert": 1, "tensor": 1} and result["fits"] is True
  assert result["bytes_per_device"] == result["params_bytes"] + result["kv_bytes"] + result["activation_bytes"]
  assert "TPU v5e" in out


def test_cache_bytes_follow_init_state_and_split_over_data():
  cfg = config("small")
  state = jax.eval_shape(lambda: init_state(cfg, 8, 1024))
  full = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
  assert plan_lib.cache_per_device(cfg, 8, 1024, abstract_mesh({}), DEFAULT_RULES) == full
  assert plan_lib.cache_per_device(cfg, 8, 1024, abstract_mesh({"data": 4, "expert": 2}), DEFAULT_RULES) == full // 4


def test_expert_mesh_divides_the_experts():
  """On expert=4 the routed experts take a quarter of the bytes, and FSDP over (fsdp, expert) splits the rest."""
  cfg = config("small")
  groups = plan_lib.param_groups(abstract_model(cfg))
  one = plan_lib.params_per_device(groups, abstract_mesh({}), DEFAULT_RULES)
  four = plan_lib.params_per_device(groups, abstract_mesh({"expert": 4}), DEFAULT_RULES)
  assert one["params"] / 4 <= four["params"] < one["params"] / 2
  p = plan_lib.plan(cfg, abstract_mesh({"expert": 4}), DEFAULT_RULES, job="train_drafter", device="h100", batch=4,
                    seq=256, groups=groups)
  assert p["kv_bytes"] == 0 and p["optimizer_bytes"] == 0 and p["fits"]
