"""The aux-loss-free routing-bias update of DSpark drafters with v4 layers in the distillation step, offline features
on a data=2 mesh (the sharded jit, state in its shardings). Random arrays stand in for the tiny target's embedding,
LM head and features (as in tests/drafters/test_v4_layer.py): the update reads only the drafter's own routing.

  - the new biases equal bias + rate · sign(mean − load), load counted by a naive loop over the kept blocks' slots
    of expert ids from a separate layer-by-layer forward, and they keep their sharding;
  - padding blocks (keep = 0) change nothing, though their routing does change with their anchor's token;
  - the step's expert-load entropy matches the same naive loads; `pool` averages it over batches;
  - drafters without routed layers (dense DSpark; MTP, whose copy of the target's MTP block has a routed MoE) get
    their `rest` handed from input to output (the traced step forwards it) and no routing metric.

One compile of the v4 step serves every v4 test (same shapes, fresh state per call: the step donates it)."""

import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsv4.drafters.build import abstract_drafter
from dsv4.drafters.config import mtp_config
from dsv4.drafters.v4_layer import to_streams
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, state_shardings
from dsv4.training import distill, train_state
from tests.training.test_distill_step import DRAFTER as DENSE
from tests.training.test_distill_step import TARGET, T, rows

# No heads and the dense expert reference: the routing (and so the update) is the same, the step compiles faster.
V4 = DENSE.replace(layer_type="v4", n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                   n_shared_experts=1, hc_mult=2, sliding_window=6, markov="none", markov_rank=0,
                   confidence_head=False, alpha_conf=0.0)
V4_TARGET = TARGET.replace(moe_impl="dense")  # the drafter's MoE takes the target's routing conventions and impl
G, E, K = V4.block_size, V4.n_routed_experts, V4.num_experts_per_tok
RATE, LR = 0.25, 0.1
KEPT, DUMMIES = 4, 4  # per row: the first KEPT sampled blocks stay, then DUMMIES padding blocks
D, V, L = TARGET.hidden_size, TARGET.vocab_size, len(V4.target_layer_ids)


@functools.cache
def target() -> dict:
  """The tiny target's arrays that offline mode reads (embedding, LM head), random."""
  rng = np.random.default_rng(0)
  return {"params": {"embed": rng.normal(size=(V, D)).astype(np.float32),
                     "lm_head": (rng.normal(size=(D, V)) / np.sqrt(D)).astype(np.float32)}, "frozen": {}}


def with_features(b: dict) -> dict:
  """The rows with random final hidden states and taps (the offline mode's batch)."""
  rng = np.random.default_rng(1)
  B = b["tokens"].shape[0]
  return {**b, "hidden": rng.normal(size=(B, T, D)).astype(np.float32),
          "taps": rng.normal(size=(B, T, L, D)).astype(np.float32)}


@functools.cache
def base_batch() -> dict:
  """Two packed rows; each keeps its first KEPT sampled blocks, then DUMMIES padding blocks (keep = 0) anchored at
  real tokens past every kept block's reach (its G slots and their labels), so no kept block reads their tokens."""
  b = rows(seed=4)
  anchor, keep = [], []
  for r in range(b["tokens"].shape[0]):
    kept = b["anchor"][r][b["keep"][r] == 1][:KEPT]
    assert len(kept) == KEPT
    reach = int(kept.max()) + G + 1
    dummies = np.linspace(reach, np.flatnonzero(b["segment_ids"][r]).max(), DUMMIES).astype(np.int32)
    assert reach <= dummies.min() and dummies.max() < T
    anchor.append(np.r_[kept, dummies])
    keep.append(np.r_[np.ones(KEPT), np.zeros(DUMMIES)])
  rows_only = {k: b[k] for k in distill.ROW_FIELDS}
  return with_features({**rows_only, "anchor": np.stack(anchor).astype(np.int32),
                        "keep": np.stack(keep).astype(np.int32)})


def changed_batch() -> dict:
  """base_batch with every padding block's anchor token changed."""
  b = base_batch()
  tokens = b["tokens"].copy()
  for r, a in zip(*np.nonzero(b["keep"] == 0), strict=True):
    p = b["anchor"][r, a]
    tokens[r, p] = (tokens[r, p] + 7) % V
  return {**b, "tokens": tokens}


def draw(rng, x):
  """A random parameter value for abstract leaf x: normal / √fan-in for a matrix, ones for a vector."""
  value = rng.normal(size=x.shape) / np.sqrt(x.shape[-2]) if x.ndim > 1 else np.ones(x.shape)
  return value.astype(x.dtype)


@functools.cache
def v4_setup() -> types.SimpleNamespace:
  """The v4 drafter (graphdef, host params, host starting rest), the jitted sharded step and what it runs with."""
  mesh = make_mesh({"data": 2}, jax.devices()[:2])
  graphdef, abstract_params, abstract_rest = nnx.split(abstract_drafter(V4, V4_TARGET), nnx.Param, ...)
  # Parameters drawn in numpy (normal / √fan-in matrices, unit vectors): the update needs a drafter whose routing
  # depends on its input, and a jitted random init would compile about as long as the step. The starting biases
  # are random, not zero: they steer the routing too, and the update must land on top of them.
  rng = np.random.default_rng(7)
  params = jax.tree.map(functools.partial(draw, rng), nnx.to_pure_dict(abstract_params))
  rest = jax.tree.map(lambda b: (0.3 * rng.normal(size=b.shape)).astype(np.float32), nnx.to_pure_dict(abstract_rest))
  optimizer = optax.sgd(LR)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  p_sh, r_sh = (nnx.to_pure_dict(state_shardings(x, mesh, DEFAULT_RULES)) for x in (abstract_params, abstract_rest))
  shardings = {"params": p_sh, "rest": r_sh, "opt": train_state.optimizer_shardings(optimizer, params, p_sh, mesh),
               "step": replicated}
  t_sh = jax.tree.map(lambda _: replicated, target())
  ranks = {**{k: 2 for k in distill.ROW_FIELDS + distill.BLOCK_FIELDS}, "hidden": 3, "taps": 4}
  batch_sh = distill.batch_sharding(mesh, DEFAULT_RULES, ranks)
  loss_fn = distill.make_loss_fn(graphdef, V4, ("taps",), None, V4_TARGET, "offline")
  step = distill.make_train_step(loss_fn, optimizer, lambda s: LR, shardings, t_sh, batch_sh, expert_bias_rate=RATE)
  return types.SimpleNamespace(graphdef=graphdef, params=params, rest=rest, step=step, mesh=mesh, shardings=shardings,
                               batch_sh=batch_sh, target=jax.device_put(target(), t_sh), optimizer=optimizer)


@functools.cache
def v4_step(which: str):
  """(new rest (host), its shardings, sums) after one sharded step on `which` batch from fresh state."""
  v4 = v4_setup()
  b = base_batch() if which == "base" else changed_batch()
  state = {"params": v4.params, "rest": v4.rest, "opt": v4.optimizer.init(v4.params), "step": np.zeros((), np.int32)}
  state = jax.device_put(state, v4.shardings)
  with jax.set_mesh(v4.mesh):
    new, sums = v4.step(state, v4.target, jax.device_put(b, v4.batch_sh))
  return (jax.device_get(new["rest"]), jax.tree.map(lambda x: x.sharding, new["rest"]), jax.device_get(sums))


@functools.cache
def layerwise_ids_fn():
  """Jitted (params, rest, frozen arrays, batch) -> expert ids [B, A, G, k] of each v4 layer, the blocks built
  by hand (anchor embedding, mask embeddings, streams) and the layers run one by one: not DSpark's forward."""
  graphdef = v4_setup().graphdef

  @jax.jit
  def run(params, rest, target_arrays, b):
    d = nnx.merge(graphdef, params, rest)
    frozen = distill.frozen_target(target_arrays, V4_TARGET)
    take = lambda x: jnp.take_along_axis(x, b["anchor"], axis=1)
    anchor_pos = take(b["positions"])
    h = frozen.embed(take(b["tokens"]))[:, :, None, :]
    h = jnp.concatenate([h, jnp.broadcast_to(d.mask_embed[...], h.shape[:2] + (G - 1, h.shape[-1]))], axis=2)
    s = to_streams(h, V4.hc_mult)
    ctx = d.context_features(b["taps"])
    pos_BAG = anchor_pos[..., None] + jnp.arange(G)
    ids = []
    for layer in d.layers:
      k, v = layer.context_kv(ctx, b["positions"])
      s, experts = layer.forward(s, pos_BAG, k, v, b["anchor"] - anchor_pos, b["anchor"])
      ids.append(experts)
    return ids

  return run


def layerwise_ids(b: dict) -> list:
  v4 = v4_setup()
  return [np.asarray(x) for x in layerwise_ids_fn()(v4.params, v4.rest, target(), b)]


def naive_load(ids_BAGK, keep_BA, count_padding: bool = False):
  load = np.zeros(E, np.int64)
  for b in range(ids_BAGK.shape[0]):
    for a in range(ids_BAGK.shape[1]):
      if keep_BA[b, a] == 1 or count_padding:
        for g in range(G):
          for e in ids_BAGK[b, a, g]:
            load[e] += 1
  return load


def bias_of(rest, n):
  return np.asarray(rest["layers"][n]["ffn"]["bias"])


def test_new_biases_equal_sign_update_from_a_naive_count_over_kept_slots():
  b = base_batch()
  rest_before, shardings_before = v4_setup().rest, v4_setup().shardings["rest"]
  new_rest, new_sh, sums = v4_step("base")
  assert b["keep"].sum() == 2 * KEPT and (b["keep"] == 0).sum() == 2 * DUMMIES
  ids = layerwise_ids(b)
  entropies = []
  for n, ids_BAGK in enumerate(ids):
    load = naive_load(ids_BAGK, b["keep"])
    assert load.sum() == 2 * KEPT * G * K
    before = bias_of(rest_before, n)
    want = before + np.float32(RATE) * np.sign(load.mean() - load).astype(np.float32)
    got = bias_of(new_rest, n)
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=0, err_msg=f"layer {n}")
    moved = got - before
    assert (moved > 0).any() and (moved < 0).any(), f"layer {n}: biases did not move both ways"
    # The bias leaves the step in the sharding it came in with (out_shardings = the state's shardings).
    assert new_sh["layers"][n]["ffn"]["bias"].is_equivalent_to(shardings_before["layers"][n]["ffn"]["bias"], 1)
    p = load / load.sum()
    entropies.append(-np.sum(p[p > 0] * np.log(p[p > 0])) / np.log(E))
  np.testing.assert_allclose(sums["expert_load_entropy_sum"], np.mean(entropies), rtol=1e-5)
  assert sums["expert_load_batches"] == 1
  assert set(new_rest) == {"layers"} and len(new_rest["layers"]) == V4.num_layers


def test_padding_blocks_do_not_change_the_update():
  """The padding blocks' anchor tokens change, and with them their routing, so that counting them would move the
  biases differently; yet the updated biases and the entropy are bitwise the same."""
  base, changed = base_batch(), changed_batch()
  pad = base["keep"] == 0
  assert (base["tokens"] != changed["tokens"]).sum() == pad.sum()
  ids_base, ids_changed = layerwise_ids(base), layerwise_ids(changed)
  rest_base, _, sums_base = v4_step("base")
  rest_changed, _, sums_changed = v4_step("changed")
  sign = lambda load: np.sign(load.mean() - load)
  padding_counts = False
  for n, (a, c) in enumerate(zip(ids_base, ids_changed, strict=True)):
    np.testing.assert_array_equal(a[~pad], c[~pad])  # the kept blocks are routed the same
    assert (a[pad] != c[pad]).any(), f"layer {n}: the padding blocks' routing did not change"
    padding_counts |= bool((sign(naive_load(c, base["keep"], True)) != sign(naive_load(c, base["keep"]))).any())
    np.testing.assert_array_equal(bias_of(rest_changed, n), bias_of(rest_base, n))
  assert padding_counts, "no layer's update would differ with the padding blocks counted: the test is blind"
  assert sums_changed["expert_load_entropy_sum"] == sums_base["expert_load_entropy_sum"]


@pytest.mark.parametrize("kind", ["dense", "mtp"])
def test_drafters_without_routed_layers_hand_rest_through(kind):
  """The step traced on abstract arrays: each `rest` leaf of the new state is the input's own (so bitwise the
  same) — dense DSpark's (none) and the MTP drafter's (its MoE bias, which this update leaves to the target's
  training) — and no routing metric is reported."""
  target_cfg = TARGET if kind == "dense" else TARGET.replace(num_nextn_predict_layers=1)
  cfg = DENSE if kind == "dense" else mtp_config(hidden_size=D, block_size=2)
  drafter = abstract_drafter(cfg, target_cfg)
  assert not hasattr(drafter, "routed_moes") or not drafter.routed_moes()
  names = tuple(drafter.feature_names)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  assert (kind == "mtp") == bool(jax.tree.leaves(rest))
  optimizer = optax.sgd(LR)
  state = {"params": params, "rest": rest, "opt": jax.eval_shape(optimizer.init, params),
           "step": jax.ShapeDtypeStruct((), jnp.int32)}
  B, A = 2, KEPT + DUMMIES
  shapes = {**{k: (B, T) for k in distill.ROW_FIELDS}, **{k: (B, A) for k in distill.BLOCK_FIELDS}}
  batch = {k: jax.ShapeDtypeStruct(v, jnp.int32) for k, v in shapes.items()}
  feats = {"hidden": (B, T, D), "taps": (B, T, L, D), "streams": (B, T, target_cfg.hc_mult, D)}
  batch.update({k: jax.ShapeDtypeStruct(feats[k], jnp.float32) for k in ("hidden", *names)})
  arrays = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target())
  step = distill.make_train_step(distill.make_loss_fn(graphdef, cfg, names, None, target_cfg, "offline"), optimizer,
                                 lambda s: LR, expert_bias_rate=RATE)
  closed = jax.make_jaxpr(step)(state, arrays, batch)
  (jit_eqn,) = closed.jaxpr.eqns  # the jitted step, whose inner jaxpr names inputs and outputs
  inner = jit_eqn.params["jaxpr"].jaxpr
  state_rest = (jax.tree_util.SequenceKey(0), jax.tree_util.DictKey("rest"))  # args[0] / outputs[0] = state

  def rest_vars(tree, variables):
    paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    return {path[2:]: v for path, v in zip(paths, variables, strict=True) if path[:2] == state_rest}

  rest_in = rest_vars((state, arrays, batch), inner.invars)
  out_shapes = jax.eval_shape(step, state, arrays, batch)
  rest_out = rest_vars(out_shapes, inner.outvars)
  assert len(rest_in) == len(jax.tree.leaves(rest)) and rest_out.keys() == rest_in.keys()
  assert all(rest_out[k] is rest_in[k] for k in rest_in)
  assert not any(k.startswith("expert_load") for k in out_shapes[1])


def test_pool_averages_the_entropy_over_batches_and_leaves_other_outputs_alone():
  def sums(entropy=None, loss=2.0, weight=4.0):
    s = {k: np.float32(loss * weight) for k in distill.LOSS_TERMS}
    s.update(weight=np.float32(weight), accept_sum=np.array([2.0, 1.0]), accept_count=np.array([4.0, 4.0]),
             tau_sum=np.float32(7.0), blocks=np.float32(4))
    if entropy is not None:
      s.update(expert_load_entropy_sum=np.float32(entropy), expert_load_batches=np.float32(1))
    return s

  pooled = distill.pool([sums(0.5), sums(0.9, loss=1.0, weight=12.0)])
  assert pooled["expert_load_entropy"] == pytest.approx(0.7)
  dense = distill.pool([sums(), sums(loss=1.0, weight=12.0)])
  assert "expert_load_entropy" not in dense
  assert {k: v for k, v in pooled.items() if k != "expert_load_entropy"} == dense
  assert dense["loss"] == pytest.approx((2.0 * 4 + 1.0 * 12) / 16)


def test_a_negative_rate_is_refused_before_compute():
  with pytest.raises(ValueError, match="config.train.expert_bias_rate"):
    distill.make_train_step(lambda *a: None, optax.sgd(LR), lambda s: LR, expert_bias_rate=-1e-3)
