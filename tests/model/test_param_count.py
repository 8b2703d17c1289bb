"""Parameter counts: the published V4 sizes, the scaled targets' budgets, and an allocated-model cross-check."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from dsv4.configs import load_config, model_config
from dsv4.model.layers import FrozenState
from dsv4.model.param_count import count_params
from dsv4.model.transformer import Transformer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(name):
  return model_config(load_config(os.path.join(ROOT, f"configs/target/{name}.py")))


@pytest.fixture(scope="module")
def counts():
  return {name: count_params(config(name)) for name in ("tiny", "small", "base", "v4_flash", "v4_pro")}


def test_v4_pro_matches_published(counts):
  c = counts["v4_pro"]
  assert abs(c["total_params"] / 1.6e12 - 1) < 0.03
  assert abs(c["active_params"] / 49e9 - 1) < 0.05
  assert abs(c["active_params_incl_embedding"] / 49e9 - 1) < 0.05


def test_v4_flash_matches_published(counts):
  c = counts["v4_flash"]
  assert abs(c["total_params"] / 284e9 - 1) < 0.03
  assert 12e9 <= c["active_params"] <= 14.5e9
  assert 12e9 <= c["active_params_incl_embedding"] <= 14.5e9


def test_scaled_budgets(counts):
  assert counts["tiny"]["total_params_with_mtp"] < 2e6
  # small must fit the committed-target budget: ≤ 32 MB in bf16 with MTP.
  assert 5e6 <= counts["small"]["total_params"] and counts["small"]["total_params_with_mtp"] * 2 <= 32e6
  assert 1e9 <= counts["base"]["total_params"] and counts["base"]["total_params_with_mtp"] <= 3e9


@pytest.mark.parametrize("name", ("tiny", "v4_flash", "v4_pro"))
def test_groups_match_closed_forms(counts, name):
  """The grouping against formulas written from the config alone (every layer is MoE, untied head)."""
  mc, c = config(name), counts[name]
  b, L, D, I = c["breakdown"], mc.num_hidden_layers, mc.hidden_size, mc.moe_intermediate_size
  E, k = mc.n_routed_experts, mc.num_experts_per_tok
  assert b["other"] == 0 and c["mtp_breakdown"]["other"] == 0
  assert b["embedding"] == b["head"] == mc.vocab_size * D
  assert b["routed_experts"] == L * E * 3 * D * I
  assert b["shared_experts"] == L * mc.n_shared_experts * 3 * D * I
  assert b["router"] == L * D * E
  assert b["norms"] == (2 * L + 1) * D
  assert c["total_params"] == sum(v for g, v in b.items() if g != "mtp")
  assert c["active_params"] == c["total_params"] - b["embedding"] - b["routed_experts"] * (E - k) // E
  assert c["total_params_with_mtp"] == c["total_params"] + b["mtp"]
  assert c["mtp_breakdown"]["routed_experts"] == mc.num_nextn_predict_layers * E * 3 * D * I
  assert c["mtp_counted"] is False


@pytest.mark.slow  # eager init compiles one random-normal kernel per parameter shape: ~20 s on 2 CPU cores
def test_tiny_count_equals_an_allocated_model():
  mc = config("tiny")
  model = Transformer(mc, rngs=nnx.Rngs(0))
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  n_frozen = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, FrozenState)))
  c = count_params(mc)
  assert c["total_params_with_mtp"] == n_params
  assert sum(c["frozen"].values()) == n_frozen


def test_model_info_script_prints_json_last():
  out = subprocess.run([sys.executable, "scripts/model_info.py", "--config", "configs/target/tiny.py"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=True).stdout
  result = json.loads(out.strip().splitlines()[-1])
  expected = count_params(config("tiny"))
  for key in ("total_params", "active_params", "total_params_with_mtp", "active_params_with_mtp", "mtp_counted",
              "breakdown"):
    assert result[key] == expected[key], key
  assert result["config"] == "configs/target/tiny.py"
