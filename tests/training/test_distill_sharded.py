"""The drafter training step on 8 devices equals the single-device step: losses, acceptance sums, gradient norm and
the parameters after two steps, on data=8, fsdp=2·expert=2·tensor=2 and expert=8 (default rules; drafter, target and
batch all sharded). SGD with momentum, not AdamW: see tests/training/test_train_step_sharded.py for why Adam's
per-element normalisation turns rounding noise into lr-sized moves."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsv4.data.anchors import batch_anchors
from dsv4.data.packing import pack_documents
from dsv4.drafters.build import build_drafter
from dsv4.model import Transformer
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES
from dsv4.training import distill, train_state
from tests.training.test_distill_step import DRAFTER, T
from tests.training.test_distill_step import TARGET as TARGET4

TARGET = TARGET4.replace(n_routed_experts=8)  # expert=8 needs one expert per device at least

B, STEPS, LR = 8, 2, 0.5
MESHES = ({"data": 8}, {"fsdp": 2, "expert": 2, "tensor": 2}, {"expert": 8})


def batch():
  rng = np.random.default_rng(5)
  docs = [rng.integers(1, TARGET.vocab_size, size=rng.integers(5, 30)) for _ in range(40)]
  packed = list(pack_documents(docs, T, align=4))[:B]
  assert len(packed) == B
  rows = {k: np.stack([getattr(r, k) for r in packed]).astype(np.int32)
          for k in ("tokens", "segment_ids", "positions", "target_mask")}
  anchors = batch_anchors(rows, num_anchors=3, max_blocks=8, seed=0, step=0)
  return {**rows, "anchor": anchors["anchor"], "keep": anchors["keep"]}


@functools.cache
def target_parts():
  make = lambda: Transformer(TARGET, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  tgd, params, frozen = train_state.split_model(nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))()))
  return tgd, {"params": params, "frozen": frozen}


V4_DRAFTER = DRAFTER.replace(layer_type="v4", n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             hc_mult=2, sliding_window=6)


def run(mesh_sizes, drafter_cfg=DRAFTER, moe_impl=None) -> tuple[list, dict]:
  mesh = make_mesh(mesh_sizes, jax.devices()[:int(np.prod(list(mesh_sizes.values())))])
  tgd, target = target_parts()
  model = nnx.merge(tgd, target["params"], target["frozen"])
  t_sh = dict(zip(("params", "frozen"), train_state.model_shardings(model, mesh, DEFAULT_RULES), strict=True))
  target = {k: jax.device_put(target[k], t_sh[k]) for k in t_sh}
  drafter = build_drafter(drafter_cfg, distill.drafter_target_config(TARGET, moe_impl), seed=1, mesh=mesh,
                          rules=DEFAULT_RULES)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  optimizer = optax.sgd(LR, momentum=0.9)
  p_sh = jax.tree.map(lambda x: x.sharding, params)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  shardings = {"params": p_sh, "rest": jax.tree.map(lambda x: x.sharding, rest),
               "opt": train_state.optimizer_shardings(optimizer, params, p_sh, mesh), "step": replicated}
  state = {"params": params, "rest": rest, "opt": jax.jit(optimizer.init, out_shardings=shardings["opt"])(params),
           "step": jax.device_put(jnp.zeros((), jnp.int32), replicated)}
  b = batch()
  batch_sh = distill.batch_sharding(mesh, DEFAULT_RULES, {k: 2 for k in b})
  loss_fn = distill.make_loss_fn(graphdef, drafter_cfg, ("taps",), tgd, TARGET, "online", moe_impl)
  step = distill.make_train_step(loss_fn, optimizer, lambda s: LR, shardings, t_sh, batch_sh)
  sums = []
  with jax.set_mesh(mesh):
    for _ in range(STEPS):
      state, s = step(state, target, {k: jax.device_put(v, batch_sh[k]) for k, v in b.items()})
      sums.append(jax.device_get(s))
  return sums, jax.device_get(state["params"]), jax.device_get(state["rest"])


@functools.cache
def reference():
  return run({"data": 1})


@pytest.mark.slow  # three 8-device compilations of the step
@pytest.mark.parametrize("mesh_sizes", MESHES, ids=lambda m: "x".join(f"{k}{v}" for k, v in m.items()))
def test_sharded_drafter_step_equals_single_device(mesh_sizes):
  ref_sums, ref_params, _ = reference()
  sums, params, _ = run(mesh_sizes)
  assert ref_sums[0]["weight"] > 0
  for got, want in zip(sums, ref_sums, strict=True):
    for k in ("loss", "ce", "l1", "conf", "weight", "grad_norm", "accept_sum", "accept_count"):
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7 * np.max(np.abs(want[k])), err_msg=k)
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(tree)[0])
  a, b = flat(params), flat(ref_params)
  scale = max(float(np.max(np.abs(v))) for v in b.values())
  for path, want in b.items():
    got = a[path]
    assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)) + 1e-7 * scale, jax.tree_util.keystr(path)
  moved = max(float(np.max(np.abs(b[p] - v))) for p, v in flat(jax.device_get(drafter_init())).items())
  assert moved > 1e-3  # the steps changed the parameters well above the tolerance


@pytest.mark.slow  # two compilations of a v4-drafter step
def test_expert_parallel_target_and_v4_drafter_equal_one_device():
  """train.moe_impl = "expert_parallel" on expert=8 (the target's and the v4 drafter's tokens go to the devices
  holding their experts) gives the single-device step's losses, parameters and routing biases."""
  ref_sums, ref_params, ref_rest = run({"data": 1}, V4_DRAFTER)
  sums, params, rest = run({"expert": 8}, V4_DRAFTER, "expert_parallel")
  for got, want in zip(sums, ref_sums, strict=True):
    for k in ("loss", "ce", "l1", "conf", "grad_norm", "accept_sum", "expert_load_entropy_sum"):
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7 * np.max(np.abs(want[k])), err_msg=k)
  for tree, ref in ((params, ref_params), (rest, ref_rest)):
    flat = dict(jax.tree_util.tree_flatten_with_path(ref)[0])
    scale = max(float(np.max(np.abs(v))) for v in flat.values())
    for path, got in jax.tree_util.tree_flatten_with_path(tree)[0]:
      want = flat[path]
      assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want)) + 1e-7 * scale, jax.tree_util.keystr(path)


@functools.cache
def drafter_init():
  drafter = build_drafter(DRAFTER, TARGET, seed=1)
  return nnx.to_pure_dict(nnx.state(drafter, nnx.Param))
