"""MoE: routing, the ragged and dense expert paths, and the whole block against a naive numpy loop and against
transformers' DeepseekV4TopKRouter / DeepseekV4HashRouter / DeepseekV4SparseMoeBlock."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState
from dsv4.model.moe import MoE

torch = pytest.importorskip("torch")
hf_cfg = pytest.importorskip("transformers.models.deepseek_v4.configuration_deepseek_v4")
hf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

D, E, K, I, V = 16, 8, 3, 8, 64
LIMIT = 1.0  # small enough that the clamps of the SwiGLU are exercised
SCALING = 1.5
B, T = 2, 16


def _cfg(scoring="sqrtsoftplus", **kw):
  return ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=1, compress_ratios=(0,), num_attention_heads=2,
                     head_dim=16, q_lora_rank=8, qk_rope_head_dim=8, o_groups=1, o_lora_rank=8, n_routed_experts=E,
                     num_experts_per_tok=K, moe_intermediate_size=I, scoring_func=scoring,
                     routed_scaling_factor=SCALING, swiglu_limit=LIMIT, num_hash_layers=0, **kw)


def _uneven_hash_table(rng):
  """Expert 2 is in every row, experts 0 and 1 in none, the rest at random: uneven loads with empty experts."""
  rows = [np.concatenate([[2], rng.choice(np.arange(3, E), K - 1, replace=False)]) for _ in range(V)]
  return np.stack(rows).astype(np.int32)


def _moe(scoring="sqrtsoftplus", is_hash=False, seed=0, uneven=True, **cfg_kw):
  cfg = _cfg(scoring, **cfg_kw)
  moe = MoE(cfg, is_hash, rngs=nnx.Rngs(seed), dtype=jnp.float32, param_dtype=jnp.float32)
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(moe):
    if isinstance(node, nnx.Param):
      fan_in = node.shape[-2]
      node[...] = jnp.asarray(rng.standard_normal(node.shape) * 1.5 / np.sqrt(fan_in), jnp.float32)
  if is_hash:
    table = _uneven_hash_table(rng) if uneven else np.stack([rng.permutation(E)[:K] for _ in range(V)])
    moe.tid2eid[...] = jnp.asarray(table, jnp.int32)
  else:
    bias = rng.standard_normal(E) * 0.1
    if uneven:  # experts 0 and 1 are never picked, expert 2 always
      bias[:2], bias[2] = -100.0, 100.0
    moe.bias[...] = jnp.asarray(bias, jnp.float32)
  return moe, rng


def _inputs(rng):
  x = rng.standard_normal((B, T, D)).astype(np.float32)
  ids = rng.integers(0, V, (B, T)).astype(np.int32)
  return x, ids


# --- numpy reference ----------------------------------------------------------------------------------

def _np_scores(name, logits):
  logits = logits.astype(np.float64)
  if name == "sqrtsoftplus":
    return np.sqrt(np.log1p(np.exp(logits)))
  if name == "sigmoid":
    return 1 / (1 + np.exp(-logits))
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_route(moe, x_TD, ids_T, weights_from="scores"):
  """Per token: the k experts (top-k of score + bias, or the hash table) and their renormalised weights."""
  scores = _np_scores(moe.scoring, x_TD.astype(np.float64) @ np.asarray(moe.router[...], np.float64))
  if moe.is_hash:
    idx = np.asarray(moe.tid2eid[...])[ids_T]
    corrected = scores
  else:
    corrected = scores + np.asarray(moe.bias[...], np.float64)
    idx = np.argsort(-corrected, axis=-1, kind="stable")[:, :K]
  source = scores if weights_from == "scores" else corrected
  w = np.take_along_axis(source, idx, -1)
  w = w / (w.sum(-1, keepdims=True) + 1e-20) * SCALING
  return w, idx


def _np_swiglu(x, wg, wu, wd):
  gate = np.minimum(x @ wg, LIMIT)
  up = np.clip(x @ wu, -LIMIT, LIMIT)
  return (gate / (1 + np.exp(-gate)) * up) @ wd


def _np_experts(moe, x_TD, w_TK, idx_TK):
  """One token, one picked expert at a time."""
  wg, wu, wd = (np.asarray(p[...], np.float64) for p in (moe.w_gate, moe.w_up, moe.w_down))
  x = x_TD.astype(np.float64)
  y = np.zeros_like(x)
  for t in range(x.shape[0]):
    for k in range(idx_TK.shape[1]):
      e = idx_TK[t, k]
      y[t] += w_TK[t, k] * _np_swiglu(x[t], wg[e], wu[e], wd[e])
  return y


def _np_moe(moe, x_BTD, ids_BT):
  x = x_BTD.reshape(-1, D)
  w, idx = _np_route(moe, x, ids_BT.reshape(-1))
  y = _np_experts(moe, x, w, idx)
  s = moe.shared
  y = y + _np_swiglu(x.astype(np.float64), *(np.asarray(l.kernel[...], np.float64)
                                               for l in (s.gate_proj, s.up_proj, s.down_proj)))
  return y.reshape(x_BTD.shape), idx


def _same_sets(a_TK, b_TK):
  np.testing.assert_array_equal(np.sort(np.asarray(a_TK), -1), np.sort(np.asarray(b_TK), -1))


def _by_expert(w_TK, idx_TK):
  """[T, E] weight per expert (0 off the top-k): compares weights independent of the order of the k slots."""
  out = np.zeros((w_TK.shape[0], E))
  np.put_along_axis(out, np.asarray(idx_TK).astype(np.int64), np.asarray(w_TK, np.float64), -1)
  return out


# --- (a) ragged == dense == numpy loop ----------------------------------------------------------------

ROUTINGS = [(s, h) for s in ("sqrtsoftplus", "sigmoid", "softmax") for h in (False, True)]


@pytest.mark.parametrize("scoring,is_hash", ROUTINGS)
def test_ragged_and_dense_equal_numpy_loop(scoring, is_hash):
  moe, rng = _moe(scoring, is_hash)
  x, ids = _inputs(rng)
  ref, ref_idx = _np_moe(moe, x, ids)
  loads = np.bincount(ref_idx.reshape(-1), minlength=E)
  assert loads[0] == loads[1] == 0 and loads[2] == B * T and len(set(loads[3:])) > 1, loads  # uneven, empty
  for impl in ("ragged", "dense"):
    y, idx = moe(jnp.asarray(x), jnp.asarray(ids), impl=impl)
    _same_sets(idx.reshape(-1, K), ref_idx)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5, err_msg=impl)


def test_expert_paths_agree_on_arbitrary_assignments():
  """Explicit assignments: a hot expert, empty experts, and some tokens sent twice to expert 7 (two slots)."""
  moe, rng = _moe("sigmoid")
  x = rng.standard_normal((24, D)).astype(np.float32)
  idx = np.stack([rng.choice([3, 5, 7, 7, 7, 6], K, replace=False) if t % 3 else [7, 3, 0] for t in range(24)])
  w = rng.standard_normal((24, K)).astype(np.float32)
  ref = _np_experts(moe, x, w, idx)
  ragged = moe.experts_ragged(jnp.asarray(x), jnp.asarray(w), jnp.asarray(idx, jnp.int32))
  dense = moe.experts_dense(jnp.asarray(x), jnp.asarray(w), jnp.asarray(idx, jnp.int32))
  np.testing.assert_allclose(np.asarray(ragged), ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dense), ref, rtol=1e-5, atol=1e-5)


# --- (b) routing vs transformers; bias picks, uncorrected scores weigh --------------------------------

def _hf_config(scoring, is_hash):
  return hf_cfg.DeepseekV4Config(
      vocab_size=V, hidden_size=D, moe_intermediate_size=I, n_routed_experts=E, num_experts_per_tok=K,
      n_shared_experts=1, scoring_func=scoring, routed_scaling_factor=SCALING, swiglu_limit=LIMIT,
      num_hidden_layers=1, num_attention_heads=2, head_dim=16, layer_types=["sliding_attention"],
      mlp_layer_types=["hash_moe" if is_hash else "moe"])


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))


def _load_router(router, moe):
  with torch.no_grad():
    router.weight.copy_(_t(np.asarray(moe.router[...]).T))
    if moe.is_hash:
      router.tid2eid.copy_(torch.from_numpy(np.asarray(moe.tid2eid[...]).astype(np.int64)))
    else:
      router.e_score_correction_bias.copy_(_t(moe.bias[...]))


@pytest.mark.parametrize("scoring", ["sqrtsoftplus", "sigmoid"])  # transformers' ACT2FN has no "softmax"
@pytest.mark.parametrize("is_hash", [False, True])
def test_route_matches_transformers_router(scoring, is_hash):
  moe, rng = _moe(scoring, is_hash, seed=1, uneven=False)
  x, ids = _inputs(rng)
  x_TD = x.reshape(-1, D)
  router = (hf.DeepseekV4HashRouter if is_hash else hf.DeepseekV4TopKRouter)(_hf_config(scoring, is_hash))
  _load_router(router, moe)
  with torch.no_grad():
    args = (_t(x), torch.from_numpy(ids.astype(np.int64))) if is_hash else (_t(x),)
    _, ref_w, ref_idx = router(*args)
  w, idx, _ = moe.route(jnp.asarray(x_TD), jnp.asarray(ids.reshape(-1)))
  _same_sets(idx, ref_idx.numpy())
  np.testing.assert_allclose(_by_expert(w, idx), _by_expert(ref_w.numpy(), ref_idx.numpy()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scoring", ["sqrtsoftplus", "sigmoid", "softmax"])
def test_bias_changes_selection_but_weights_use_uncorrected_scores(scoring):
  moe, rng = _moe(scoring, seed=2, uneven=False)
  x, ids = _inputs(rng)
  x_TD = x.reshape(-1, D)
  scores = _np_scores(scoring, x_TD.astype(np.float64) @ np.asarray(moe.router[...], np.float64))
  # Boost, per run, the expert that is least often picked without bias, enough to enter every token's top-k.
  unbiased_idx = np.argsort(-scores, -1, kind="stable")[:, :K]
  cold = int(np.argmin(np.bincount(unbiased_idx.reshape(-1), minlength=E)))
  bias = np.zeros(E, np.float32)
  bias[cold] = 2.0 * float(scores.max() - scores.min()) + 1.0
  moe.bias[...] = jnp.asarray(bias)
  w, idx, _ = moe.route(jnp.asarray(x_TD))
  w, idx = np.asarray(w), np.asarray(idx)
  assert (idx == cold).any(-1).all()                       # the bias did its job …
  changed = np.any(np.sort(idx, -1) != np.sort(unbiased_idx, -1), -1)
  assert changed.sum() >= T, changed                       # … and changed the selection of many tokens
  ref_w, ref_idx = _np_route(moe, x_TD, None)
  _same_sets(idx, ref_idx)
  np.testing.assert_allclose(_by_expert(w, idx), _by_expert(ref_w, ref_idx), rtol=1e-5, atol=1e-6)
  # The wrong rule (weights from the bias-corrected scores) is far from what we computed: the test discriminates.
  wrong_w, _ = _np_route(moe, x_TD, None, weights_from="corrected")
  assert np.abs(_by_expert(w, idx) - _by_expert(wrong_w, ref_idx)).max() > 1e-2
  # And transformers agrees where it can.
  if scoring != "softmax":
    router = hf.DeepseekV4TopKRouter(_hf_config(scoring, False))
    _load_router(router, moe)
    with torch.no_grad():
      _, hf_w, hf_idx = router(_t(x))
    _same_sets(idx, hf_idx.numpy())
    np.testing.assert_allclose(_by_expert(w, idx), _by_expert(hf_w.numpy(), hf_idx.numpy()), rtol=1e-5, atol=1e-6)


def test_hash_route_requires_ids():
  moe, rng = _moe(is_hash=True)
  with pytest.raises(ValueError, match="token ids"):
    moe.route(jnp.zeros((3, D)))


# --- (c) the whole block vs DeepseekV4SparseMoeBlock ---------------------------------------------------

@pytest.mark.parametrize("scoring", ["sqrtsoftplus", "sigmoid"])
@pytest.mark.parametrize("is_hash", [False, True])
def test_moe_block_matches_transformers(scoring, is_hash):
  moe, rng = _moe(scoring, is_hash, seed=3)
  x, ids = _inputs(rng)
  block = hf.DeepseekV4SparseMoeBlock(_hf_config(scoring, is_hash), 0).eval()
  assert block.is_hash == is_hash
  _load_router(block.gate, moe)
  wg, wu, wd = (np.asarray(p[...]) for p in (moe.w_gate, moe.w_up, moe.w_down))
  with torch.no_grad():
    block.experts.gate_up_proj.copy_(_t(np.concatenate([wg, wu], axis=2).transpose(0, 2, 1)))  # [E, 2I, D]
    block.experts.down_proj.copy_(_t(wd.transpose(0, 2, 1)))                                    # [E, D, I]
    for name in ("gate_proj", "up_proj", "down_proj"):
      getattr(block.shared_experts, name).weight.copy_(_t(np.asarray(getattr(moe.shared, name).kernel[...]).T))
    ref = block(_t(x), input_ids=torch.from_numpy(ids.astype(np.int64))).numpy()
  assert np.abs(ref).max() > 0.1
  for impl in ("ragged", "dense"):
    y, _ = moe(jnp.asarray(x), jnp.asarray(ids), impl=impl)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5, err_msg=impl)


# --- (d) frozen state is invisible to the optimizer ----------------------------------------------------

def test_bias_and_hash_table_are_frozen_state_not_params():
  learned, _ = _moe(is_hash=False, uneven=False)
  hashed, _ = _moe(is_hash=True)
  for moe, name in ((learned, "bias"), (hashed, "tid2eid")):
    var = getattr(moe, name)
    assert isinstance(var, FrozenState) and not isinstance(var, nnx.Param)
    assert name not in nnx.state(moe, nnx.Param)
    assert name in nnx.state(moe, FrozenState)


@pytest.mark.parametrize("is_hash", [False, True])
def test_optimizer_with_wrt_param_never_touches_frozen_state(is_hash):
  moe, rng = _moe(is_hash=is_hash, uneven=False)
  x, ids = _inputs(rng)
  frozen_before = jax.tree.map(np.asarray, nnx.state(moe, FrozenState))
  router_before = np.asarray(moe.router[...])
  # Weight decay would move any leaf it is given, so a frozen leaf leaking into the optimizer would change.
  opt = nnx.Optimizer(moe, optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1)), wrt=nnx.Param)

  def loss(m):
    y, _ = m(jnp.asarray(x), jnp.asarray(ids))
    return jnp.sum(y**2)

  @nnx.jit
  def step(m, o):
    grads = nnx.grad(loss)(m)
    o.update(m, grads)
    return grads

  grads = step(moe, opt)
  assert "bias" not in grads and "tid2eid" not in grads
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, nnx.state(moe, FrozenState)), frozen_before)
  assert not np.allclose(np.asarray(moe.router[...]), router_before)


# --- (e) gradients through the ragged path equal those through the dense path -------------------------

def test_grad_ragged_equals_grad_dense():
  moe, rng = _moe("sqrtsoftplus", False, seed=4)
  x, ids = _inputs(rng)
  cot = jnp.asarray(rng.standard_normal((B, T, D)).astype(np.float32))
  graphdef, params, rest = nnx.split(moe, nnx.Param, ...)

  def loss(params, x, impl):
    y, _ = nnx.merge(graphdef, params, rest)(x, jnp.asarray(ids), impl=impl)
    return jnp.sum(y * cot)

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  grads = {impl: grad_fn(params, jnp.asarray(x), impl) for impl in ("ragged", "dense")}
  (gp_r, gx_r), (gp_d, gx_d) = grads["ragged"], grads["dense"]
  np.testing.assert_allclose(np.asarray(gx_r), np.asarray(gx_d), rtol=1e-5, atol=1e-6)
  for name in ("w_gate", "w_up", "w_down", "router"):
    g_r, g_d = np.asarray(gp_r[name][...]), np.asarray(gp_d[name][...])
    np.testing.assert_allclose(g_r, g_d, rtol=1e-5, atol=1e-6, err_msg=name)
  g = np.asarray(gp_r["w_gate"][...])
  assert np.abs(g[2]).max() > 0 and np.abs(g[:2]).max() == 0  # the hot expert learns, the empty ones get zero
