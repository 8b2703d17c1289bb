"""Expert parallelism (dsv4.parallel.expert_parallel) on 8 fake CPU devices against independent references:

  * a MoE layer with impl="expert_parallel" on two meshes equals the dense path on one device, in value and in the
    gradients w.r.t. the input and every parameter;
  * the tiny target with moe_impl="expert_parallel" through jit_forward_sharded gives the single-device logits;
  * capacity mode drops exactly the assignments a numpy loop over the rule drops (per source device and peer, kept
    in flat token order until the C = ceil(f·N_l/n) slots are full), for both local kernels, with padded tokens;
  * bad settings fail with messages naming the field / the axis and the expert count.

Errors are max|a − b| / max|b| (sharded sums run in another order); 1e-5 in fp32 at highest matmul precision.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.configs import load_config, model_config
from dsv4.errors import ConfigError
from dsv4.model.config import ModelConfig
from dsv4.model.moe import MoE
from dsv4.model.sharded import init_sharded
from dsv4.model.transformer import jit_forward
from dsv4.parallel import expert_parallel as ep
from dsv4.parallel.forward import jit_forward_sharded
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, rules_with, state_shardings
from dsv4.parallel.sharded import bind_rules

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D, E, K, I, V = 32, 8, 2, 16, 64
B, T = 8, 64
LIMIT = 1.0  # small enough that the SwiGLU clamps are exercised
MESHES = {"expert8": {"expert": 8}, "fsdp2_expert2_tensor2": {"fsdp": 2, "expert": 2, "tensor": 2}}


def rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _cfg(**kw) -> ModelConfig:
  return ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=1, compress_ratios=(0,), num_attention_heads=2,
                     head_dim=16, q_lora_rank=8, qk_rope_head_dim=8, o_groups=1, o_lora_rank=8,
                     n_routed_experts=kw.pop("n_routed_experts", E), num_experts_per_tok=K,
                     moe_intermediate_size=I, swiglu_limit=LIMIT, num_hash_layers=0, **kw)


def _moe(**kw) -> MoE:
  """A MoE layer with weights of unit-scale outputs and a small random routing bias."""
  moe = MoE(_cfg(**kw), False, rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
  rng = np.random.default_rng(0)
  for _, node in nnx.iter_graph(moe):
    if isinstance(node, nnx.Param):
      node[...] = jnp.asarray(rng.standard_normal(node.shape) * 1.5 / np.sqrt(node.shape[-2]), jnp.float32)
  moe.bias[...] = jnp.asarray(rng.standard_normal(moe.n_experts) * 0.1, jnp.float32)
  return moe


def _loss_and_grads(graphdef, impl):
  """(y, d/dparams, d/dx) of Σ y·cot: a random cotangent so every output element matters."""

  def loss(params, rest, x, cot):
    y, _ = nnx.merge(graphdef, params, rest)(x, impl=impl)
    return jnp.sum(y * cot), y

  return jax.jit(jax.grad(loss, argnums=(0, 2), has_aux=True))


@pytest.fixture(scope="module")
def layer():
  moe = _moe()
  graphdef, params, rest = nnx.split(moe, nnx.Param, ...)
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  cot = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
  (g_params, g_x), y = _loss_and_grads(graphdef, "dense")(params, rest, x, cot)
  return graphdef, params, rest, x, cot, (y, g_params, g_x)


@pytest.mark.parametrize("sizes", list(MESHES.values()), ids=list(MESHES))
def test_layer_equals_dense_in_value_and_gradients(layer, sizes):
  graphdef, params, rest, x, cot, (ref_y, ref_gp, ref_gx) = layer
  mesh = make_mesh(sizes)
  params, rest = (jax.device_put(s, state_shardings(s, mesh, DEFAULT_RULES)) for s in (params, rest))
  x, cot = (jax.device_put(a, NamedSharding(mesh, P(("data", "fsdp")))) for a in (x, cot))
  with jax.set_mesh(mesh):
    lowered = _loss_and_grads(graphdef, "expert_parallel").lower(params, rest, x, cot)
    assert "all_to_all" in lowered.as_text()  # the exchange ran, not the local fallback
    (g_params, g_x), y = lowered.compile()(params, rest, x, cot)
  assert rel(y, ref_y) <= 1e-5
  assert rel(g_x, ref_gx) <= 1e-5
  ref = dict(nnx.to_flat_state(ref_gp))
  for path, value in nnx.to_flat_state(g_params):
    assert rel(value.get_value(), ref[path].get_value()) <= 1e-5, path


@pytest.mark.slow  # compiles the whole tiny target twice
def test_tiny_target_logits_match_single_device():
  cfg = model_config(load_config(os.path.join(ROOT, "configs/target/tiny.py")))
  ids = jax.random.randint(jax.random.key(1), (B, 128), 0, cfg.vocab_size)
  ref = np.asarray(jit_forward(init_sharded(cfg, make_mesh({}, jax.devices()[:1]), DEFAULT_RULES))(ids).logits_BTV)
  mesh = make_mesh({"expert": 8})
  model = init_sharded(cfg.replace(moe_impl="expert_parallel"), mesh, DEFAULT_RULES)
  assert rel(jit_forward_sharded(model, mesh, DEFAULT_RULES)(ids).logits_BTV, ref) <= 1e-5


# --- capacity mode ---------------------------------------------------------------------------------------------

def _np_capacity_moe(x_TD, w_TK, idx_TK, w_gate, w_up, w_down, n_dev, n_peers, factor):
  """Naive loops: per source device (contiguous token chunk) and peer, keep assignments in (t, j) order while fewer
  than C have been kept; a kept one adds w · expert(x), a dropped one nothing. Returns (y, n dropped)."""
  x, wg, wu, wd = (np.asarray(a, np.float64) for a in (x_TD, w_gate, w_up, w_down))
  T_, K_ = idx_TK.shape
  per_dev = -(-T_ // n_dev)
  cap = max(1, min(math.ceil(factor * per_dev * K_ / n_peers), per_dev * K_)) if factor > 0 else per_dev * K_
  e_local = w_gate.shape[0] // n_peers
  y, dropped = np.zeros_like(x), 0
  for src in range(n_dev):
    kept = [0] * n_peers
    for t in range(src * per_dev, min((src + 1) * per_dev, T_)):
      for j in range(K_):
        e = int(idx_TK[t, j])
        peer = e // e_local
        if kept[peer] == cap:
          dropped += 1
          continue
        kept[peer] += 1
        g, u = x[t] @ wg[e], x[t] @ wu[e]
        h = np.minimum(g, LIMIT)
        y[t] += w_TK[t, j] * ((h / (1 + np.exp(-h))) * np.clip(u, -LIMIT, LIMIT)) @ wd[e]
  return y, dropped


@pytest.fixture(scope="module")
def routed():
  """500 tokens (padded to 504 over 8 devices) routed to k distinct experts, peer 0's experts twice as likely."""
  rng = np.random.default_rng(2)
  n_tok = 500
  p = np.array([2, 2, 2, 2, 1, 1, 1, 1], np.float64)
  idx = np.stack([rng.choice(E, K, replace=False, p=p / p.sum()) for _ in range(n_tok)]).astype(np.int32)
  w = rng.uniform(0.1, 1.0, (n_tok, K)).astype(np.float32)
  x = rng.standard_normal((n_tok, D)).astype(np.float32)
  ws = [(rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32) for s in ((E, D, I), (E, D, I), (E, I, D))]
  return x, w, idx, ws


@pytest.mark.parametrize("factor,kernel,drops", [(0.0, "tiled", False), (1.5, "tiled", False),
                                                 (0.25, "tiled", True), (0.25, "ragged_dot", True)])
def test_capacity_drops_what_the_rule_drops(routed, factor, kernel, drops):
  x, w, idx, ws = routed
  mesh = make_mesh(MESHES["fsdp2_expert2_tensor2"])  # n = 2 peers, 8 source devices (fsdp, expert, tensor order)
  with jax.set_mesh(mesh):
    fn = jax.jit(lambda *a: ep.expert_parallel_moe(*a, limit=LIMIT, capacity_factor=factor, kernel=kernel))
    y, dropped = fn(x, w, idx, *ws)
  ref_y, ref_dropped = _np_capacity_moe(x, w, idx, *ws, n_dev=8, n_peers=2, factor=factor)
  assert (ref_dropped > 0) == drops  # the cases test what they claim: f=1.5 here fits, f=0.25 overflows
  assert int(dropped) == ref_dropped
  assert rel(y, ref_y) <= 1e-5


def test_capacity_count_is_sown_by_the_layer(layer):
  """moe_capacity_factor > 0: the layer's global drop count comes out as nnx.Intermediate `ep_dropped`."""
  _, params, rest, x, _, _ = layer
  graphdef = nnx.graphdef(_moe(moe_capacity_factor=0.25))

  @jax.jit
  def run(params, rest, x):
    return nnx.capture(nnx.merge(graphdef, params, rest), nnx.Intermediate)(x, impl="expert_parallel")

  with jax.set_mesh(make_mesh(MESHES["expert8"])):
    _, found = run(params, rest, x)
  (dropped,) = jax.tree.leaves(found)
  assert 0 < int(dropped) < B * T * K


# --- configuration and fallbacks -------------------------------------------------------------------------------

def test_capacity_factor_must_be_non_negative():
  with pytest.raises(ConfigError, match="moe_capacity_factor"):
    _cfg(moe_capacity_factor=-0.5)
  assert _cfg(moe_capacity_factor=1.25).moe_capacity_factor == 1.25


def test_expert_count_must_divide_the_expert_axis():
  moe = _moe(n_routed_experts=12)
  x = jax.ShapeDtypeStruct((B, T, D), jnp.float32)
  with jax.set_mesh(make_mesh({"expert": 8})):
    with pytest.raises(ConfigError, match=r"12 experts do not divide over mesh axis 'expert' of size 8"):
      jax.eval_shape(lambda x: moe(x, impl="expert_parallel"), x)


def test_local_fallback_and_rules_override():
  """No mesh, an expert axis of 1, or rules that put `exp` nowhere: the local dropless path, no exchange."""
  moe = _moe()
  local = moe.expert_path("ragged", B * T * K)
  assert moe.expert_path("expert_parallel", B * T * K) == local
  with jax.set_mesh(make_mesh({"data": 8})):
    assert moe.expert_path("expert_parallel", B * T * K) == local
  with jax.set_mesh(make_mesh({"expert": 8})):
    assert moe.expert_path("expert_parallel", B * T * K) != local
    bind_rules(moe, rules_with([("exp", None)]))
    assert moe.expert_path("expert_parallel", B * T * K) == local
    bind_rules(moe, None)
    assert moe.expert_path("expert_parallel", B * T * K) != local
    assert ep.plan(E).token_axes == ("data", "fsdp", "expert", "tensor")
