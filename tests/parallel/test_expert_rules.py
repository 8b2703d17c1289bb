"""Expert dispatch follows the run's rules, not a default: a config that moves the `exp` rule to another mesh axis
moves the parameters' expert dimension and the all_to_all of the dispatch together.

A one-layer target with moe_impl="expert_parallel" on 8 fake devices (fsdp=4 · expert=2) takes one pretraining step
(dsv4.training.pretrain) with the rules of `config.rules`. With the default rules experts live on `expert` (2
devices); with `exp` → `fsdp` (and `embed` → `expert`, so the weights' other dims do not also claim fsdp) they live
on `fsdp` (4 devices), and the exchange must run there. Each step is checked against the same step on one device.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.sharded import init_sharded
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, rules_from_config
from dsv4.training import pretrain, train_state
from dsv4.training.config import train_section
from dsv4.training.optimizer import learning_rate

B, T, V = 8, 32, 64
CFG = ModelConfig(vocab_size=V, hidden_size=32, num_hidden_layers=1, compress_ratios=(0,), num_attention_heads=2,
                  head_dim=16, q_lora_rank=8, qk_rope_head_dim=8, o_groups=1, o_lora_rank=8, n_routed_experts=8,
                  num_experts_per_tok=2, moe_intermediate_size=16, num_hash_layers=0, moe_impl="expert_parallel")
TRAIN = train_section(lr=0.1, warmup_steps=0, steps=10)
MESH = {"fsdp": 4, "expert": 2}


def _batch() -> dict:
  tokens = np.random.default_rng(0).integers(1, V, (B, T)).astype(np.int32)
  return {"tokens": tokens, "segment_ids": np.ones((B, T), np.int32),
          "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
          "target_mask": np.ones((B, T), np.int32)}


def collective_axes(jaxpr, primitive: str = "all_to_all") -> set[str]:
  """Mesh axes of every `primitive` equation in `jaxpr` and the jaxprs nested in it (jit, shard_map, loops, vjp)."""
  axes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      name = eqn.params["axis_name"]
      axes.update(name if isinstance(name, tuple) else (name,))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          axes |= collective_axes(inner, primitive)
  return axes


def _step(mesh, rules):
  """One pretraining step of the seed-0 model born on `mesh` under `rules`: (w_gate's spec, all_to_all axes in the
  step, loss, params after)."""
  import optax
  model = init_sharded(CFG, mesh, rules, seed=0)
  optimizer = optax.sgd(learning_rate(TRAIN))
  shardings = train_state.state_sharding(model, optimizer, mesh, rules)
  spec = shardings["params"]["layers"][0]["ffn"]["w_gate"].spec
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  batch_sh = pretrain.batch_sharding(mesh, rules)
  step = pretrain.make_train_step(graphdef, optimizer, TRAIN, learning_rate(TRAIN), shardings, batch_sh)
  batch = {k: jax.device_put(v, batch_sh[k]) for k, v in _batch().items()}
  with jax.set_mesh(mesh):
    axes = collective_axes(jax.make_jaxpr(step)(state, batch).jaxpr)
    state, metrics = step(state, batch)
  return spec, axes, float(metrics["loss"]), jax.tree.map(np.asarray, state["params"])


@pytest.fixture(scope="module")
def single_device():
  return _step(make_mesh({}, jax.devices()[:1]), DEFAULT_RULES)


def _overridden_rules():
  config = ml_collections.ConfigDict({"rules": (("exp", "fsdp"), ("embed", "expert"))})
  return rules_from_config(config)


@pytest.mark.parametrize("rules,axis", [(DEFAULT_RULES, "expert"), (_overridden_rules(), "fsdp")],
                         ids=["default", "exp_on_fsdp"])
def test_dispatch_follows_the_config_rules(single_device, rules, axis):
  _, local_axes, want_loss, want_params = single_device
  assert local_axes == set()  # one device: the local path, no exchange
  spec, axes, loss, params = _step(make_mesh(MESH), rules)
  assert spec[0] == axis  # the experts' weights are split over `axis` ...
  assert axes == {axis}  # ... and every all_to_all of the step (forward and backward) runs over it
  assert abs(loss - want_loss) <= 1e-5 * abs(want_loss)
  for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want_params),
                               strict=True):
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-5 * float(np.max(np.abs(want))) + 1e-7, (jax.tree_util.keystr(path), err)


def test_collective_axes_reads_nested_jaxprs():
  mesh = make_mesh(MESH)
  from jax.sharding import PartitionSpec as P
  f = jax.jit(lambda x: jax.shard_map(lambda a: jax.lax.all_to_all(a, "fsdp", 0, 0, tiled=True), mesh=mesh,
                                      in_specs=P("fsdp"), out_specs=P("fsdp"))(x))
  assert collective_axes(jax.make_jaxpr(f)(jnp.zeros((16, 4))).jaxpr) == {"fsdp"}
  assert collective_axes(jax.make_jaxpr(jnp.sin)(1.0).jaxpr) == set()


def test_rules_bound_to_the_model_are_static_and_travel_with_its_graphdef():
  model = init_sharded(CFG, make_mesh(MESH), _overridden_rules(), seed=0)
  graphdef, state = nnx.split(model)
  moe = nnx.merge(graphdef, jax.tree.map(jnp.copy, state)).layers[0].ffn
  assert dict(moe.sharding_rules)["exp"] == "fsdp"
