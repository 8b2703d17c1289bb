"""The tiled expert path (dsv4.model.moe.experts_tiled) against the dense reference and ragged_dot: outputs and
gradients on skewed routings (a hot expert, empty experts), the tile layout's bookkeeping, padding that cannot
leak, and which path `impl="ragged"` picks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.kernels.tiled_moe import n_tiles, tile_layout
from dsv4.model import moe as moe_lib
from dsv4.model.config import ModelConfig
from dsv4.model.moe import MoE

D, I, V = 16, 8, 64
LIMIT = 1.0  # small enough that the clamps of the SwiGLU are exercised


def _moe(E, K, seed=0):
  cfg = ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=1, compress_ratios=(0,), num_attention_heads=2,
                    head_dim=16, q_lora_rank=8, qk_rope_head_dim=8, o_groups=1, o_lora_rank=8, n_routed_experts=E,
                    num_experts_per_tok=K, moe_intermediate_size=I, routed_scaling_factor=1.5, swiglu_limit=LIMIT,
                    num_hash_layers=0)
  moe = MoE(cfg, False, rngs=nnx.Rngs(seed), dtype=jnp.float32, param_dtype=jnp.float32)
  rng = np.random.default_rng(seed)
  for _, node in nnx.iter_graph(moe):
    if isinstance(node, nnx.Param):
      node[...] = jnp.asarray(rng.standard_normal(node.shape) * 1.5 / np.sqrt(node.shape[-2]), jnp.float32)
  return moe, rng


def _skewed_idx(rng, T, K, E):
  """[T, K] distinct experts per token: expert 1 in every row, experts 0 and E − 1 in none when E − 2 ≥ K."""
  pool = np.arange(2, E - 1) if E - 2 >= K else np.setdiff1d(np.arange(E), [1])
  rows = [np.concatenate([[1], rng.choice(pool, K - 1, replace=False)]) for _ in range(T)]
  return np.stack(rows).astype(np.int32)


def _paths(moe):
  """One jit computing (x, w, idx) → {impl: y} for the tiled, dense and ragged_dot paths (params closed over)."""
  graphdef, state = nnx.split(moe)
  return jax.jit(lambda x, w, idx: {impl: nnx.merge(graphdef, state).expert_path(impl, 0)(x, w, idx)
                                    for impl in ("tiled", "dense", "ragged_dot")})


# --- outputs: tiled == dense == ragged_dot --------------------------------------------------------------------

# Every (T, k) pair, each T and each k with both E (a pairwise cover of T × k × E: each case compiles three paths).
CASES = [(1, 1, 4), (1, 2, 16), (1, 4, 4), (7, 1, 16), (7, 2, 4), (7, 4, 16),
         (64, 1, 4), (64, 2, 16), (64, 4, 4), (300, 1, 16), (300, 2, 4), (300, 4, 16)]


@pytest.mark.parametrize("T,K,E", CASES)
def test_tiled_equals_dense_and_ragged_dot_on_skewed_loads(T, K, E):
  moe, rng = _moe(E, K)
  x = rng.standard_normal((T, D)).astype(np.float32)
  w = rng.standard_normal((T, K)).astype(np.float32)
  idx = _skewed_idx(rng, T, K, E)
  loads = np.bincount(idx.reshape(-1), minlength=E)
  assert loads[1] == T and (loads[0] == loads[E - 1] == 0 or E - 2 < K), loads  # one expert on every token, some none
  y = jax.tree.map(np.asarray, _paths(moe)(x, w, idx))
  assert np.abs(y["dense"]).max() > 0.1
  for ref in ("dense", "ragged_dot"):
    np.testing.assert_allclose(y["tiled"], y[ref], rtol=1e-5, atol=1e-6, err_msg=f"vs {ref}")


def test_tiled_with_all_tokens_on_one_expert_and_explicit_tiles():
  """Every assignment on one expert (each token picks it in both slots here), with tiles that split the group
  unevenly and one tile larger than all the rows."""
  E, K, T = 16, 2, 64
  moe, rng = _moe(E, K, seed=1)
  x = rng.standard_normal((T, D)).astype(np.float32)
  w = rng.standard_normal((T, K)).astype(np.float32)
  idx = np.full((T, K), 5, np.int32)
  ref = np.asarray(moe.experts_dense(jnp.asarray(x), jnp.asarray(w), jnp.asarray(idx)))
  for tile in (24, 256):
    y = jax.jit(moe.experts_tiled, static_argnums=3)(x, w, idx, tile)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-6, err_msg=f"tile={tile}")


# --- gradients: tiled and ragged_dot equal dense --------------------------------------------------------------

def _grads(E, K, T, impls, dtype=jnp.float32):
  """d/d(expert weights, router, input) of sum(block(x) · cot) per impl, with a hot expert and empty ones picked by
  the bias. In float64 the experts compute in float64 (routing stays fp32 by design)."""
  moe, rng = _moe(E, K, seed=2)
  bias = rng.standard_normal(E) * 0.1
  bias[1] = 100.0  # expert 1 on every token …
  if E - 2 >= K:
    bias[0] = bias[E - 1] = -100.0  # … experts 0 and E − 1 on none
  moe.bias[...] = jnp.asarray(bias, jnp.float32)
  moe.dtype = dtype
  x = jnp.asarray(rng.standard_normal((1, T, D)), dtype)
  cot = jnp.asarray(rng.standard_normal((1, T, D)), dtype)
  graphdef, params, rest = nnx.split(moe, nnx.Param, ...)
  params = jax.tree.map(lambda a: a.astype(dtype), params)

  def loss(params, x, impl):
    y, _ = nnx.merge(graphdef, params, rest)(x, impl=impl)
    return jnp.sum(y * cot)

  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)), static_argnums=2)
  out = {}
  for impl in impls:
    gp, gx = grad_fn(params, x, impl)
    out[impl] = {"x": np.asarray(gx), **{n: np.asarray(gp[n][...]) for n in ("w_gate", "w_up", "w_down", "router")}}
  return out


def _assert_grads_equal(grads, ref, E, K, **tol):
  for impl, g in grads.items():
    for name in g:
      np.testing.assert_allclose(g[name], grads[ref][name], **tol, err_msg=f"{impl} {name}")
    assert np.abs(g["w_gate"][1]).max() > 0, impl
    if E - 2 >= K:  # the empty experts get exactly zero
      assert np.abs(g["w_gate"][0]).max() == 0 and np.abs(g["w_gate"][E - 1]).max() == 0, impl


@pytest.mark.parametrize("E,K,T", [(16, 2, 64), (4, 4, 7)])
def test_grads_equal_dense(E, K, T):
  grads = _grads(E, K, T, ("dense", "tiled", "ragged_dot"))
  _assert_grads_equal(grads, "dense", E, K, rtol=1e-5, atol=1e-6)


def test_grads_equal_dense_in_float64_with_a_hot_expert_on_300_tokens():
  """300 tokens on the hot expert: its weight gradient sums 300 terms, where fp32 paths differ in summation order
  by ~2e-6 (dense's own error against float64 is 8e-6). In float64 the two paths agree to rounding. The combine
  weights' gradient reads the experts' outputs after their cast to fp32, so it gets fp32 tolerances."""
  E, K, T = 16, 2, 300
  with jax.enable_x64(True):
    moe, rng = _moe(E, K, seed=2)
    moe.dtype = jnp.float64
    graphdef, params, rest = nnx.split(moe, nnx.Param, ...)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x, cot = (jnp.asarray(rng.standard_normal((T, D))) for _ in range(2))
    w = jnp.asarray(rng.standard_normal((T, K)).astype(np.float32))
    idx = jnp.asarray(_skewed_idx(rng, T, K, E))

    def loss(params, x, w, impl):
      return jnp.sum(nnx.merge(graphdef, params, rest).expert_path(impl, 0)(x, w, idx) * cot)

    grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    (gp_d, gx_d, gw_d), (gp_t, gx_t, gw_t) = (grad_fn(params, x, w, impl) for impl in ("dense", "tiled"))
  np.testing.assert_allclose(np.asarray(gx_t), np.asarray(gx_d), rtol=1e-12, atol=1e-12)
  for name in ("w_gate", "w_up", "w_down"):
    np.testing.assert_allclose(np.asarray(gp_t[name][...]), np.asarray(gp_d[name][...]), rtol=1e-12, atol=1e-12,
                               err_msg=name)
  np.testing.assert_allclose(np.asarray(gw_t), np.asarray(gw_d), rtol=1e-5, atol=1e-6)
  assert np.asarray(gp_t["w_gate"][...]).dtype == np.float64


# --- the layout and its padding -------------------------------------------------------------------------------

@pytest.mark.parametrize("T,K,E,tile", [(7, 2, 4, 4), (64, 4, 16, 16), (16, 1, 16, 8), (300, 2, 16, 32)])
def test_tile_layout_is_a_dropless_partition(T, K, E, tile):
  rng = np.random.default_rng(T)
  idx = _skewed_idx(rng, T, K, E) if T != 16 else np.arange(16, dtype=np.int32)[:, None]  # worst case: E groups of 1
  src_R, expert_G, row_N, used = (np.asarray(a) for a in jax.jit(tile_layout, static_argnums=(1, 2))(idx, E, tile))
  N, G = T * K, n_tiles(T * K, E, tile)
  assert src_R.shape == (G * tile,) and expert_G.shape == (G,) and row_N.shape == (N,)
  np.testing.assert_array_equal(src_R[row_N], np.arange(N))           # every assignment has its own row …
  assert (src_R < N).sum() == N and (src_R[src_R < N] < N).all()      # … and every other row is padding
  np.testing.assert_array_equal(expert_G[row_N // tile], idx.reshape(-1))  # each row sits in its expert's tile
  assert (src_R.reshape(G, tile)[used:] == N).all() and (row_N // tile < used).all()
  np.testing.assert_array_equal(np.diff(expert_G[:used]) >= 0, True)  # tiles in expert order
  loads = np.bincount(idx.reshape(-1), minlength=E)
  assert used == (-(-loads // tile)).sum()
  if T == 16:
    assert used == G  # the static tile count is exactly enough for the worst routing


def test_padding_cannot_leak_into_outputs_or_gradients():
  """Experts without tokens get huge weights; padding tiles map to one of them (and partial tiles pad with rows of
  their own expert). Outputs and gradients must not move, and the huge experts' gradients stay exactly zero."""
  E, K, T, tile = 16, 2, 64, 16
  moe, rng = _moe(E, K, seed=3)
  x = jnp.asarray(rng.standard_normal((T, D)).astype(np.float32))
  w = jnp.asarray(rng.standard_normal((T, K)).astype(np.float32))
  idx = np.stack([[1, 2 + t % 3] for t in range(T)]).astype(np.int32)  # loads 64, 22, 21, 21: partial tiles
  empty = np.bincount(idx.reshape(-1), minlength=E) == 0
  src_R, expert_G, _, used = (np.asarray(a) for a in tile_layout(jnp.asarray(idx), E, tile))
  assert used < expert_G.shape[0] and empty[expert_G[used:]].all()  # whole padding tiles, on a huge expert
  assert (src_R.reshape(-1, tile)[:used] == T * K).any()             # partial tiles with padding rows
  graphdef, params, rest = nnx.split(moe, nnx.Param, ...)

  @jax.jit
  def run(params, x, w):
    def f(params, x, w):
      y = nnx.merge(graphdef, params, rest).experts_tiled(x, w, jnp.asarray(idx), tile)
      return jnp.sum(y * jnp.arange(D, dtype=jnp.float32)), y
    return jax.grad(f, argnums=(0, 1, 2), has_aux=True)(params, x, w)

  (gp, gx, gw), y = run(params, x, w)
  huge = jax.tree.map(lambda a: a, params)
  for name in ("w_gate", "w_up", "w_down"):
    huge[name][...] = jnp.where(empty[:, None, None], 1e30, params[name][...])
    assert np.asarray(huge[name][...]).max() == 1e30 and np.asarray(params[name][...]).max() < 1e3
  (gp_h, gx_h, gw_h), y_h = run(huge, x, w)
  assert np.isfinite(np.asarray(y_h)).all()
  np.testing.assert_array_equal(np.asarray(y_h), np.asarray(y))
  np.testing.assert_array_equal(np.asarray(gx_h), np.asarray(gx))
  np.testing.assert_array_equal(np.asarray(gw_h), np.asarray(gw))
  for name in ("w_gate", "w_up", "w_down"):
    np.testing.assert_array_equal(np.asarray(gp_h[name][...]), np.asarray(gp[name][...]), err_msg=name)
    assert (np.asarray(gp_h[name][...])[empty] == 0).all(), name


# --- which path "ragged" picks --------------------------------------------------------------------------------

def test_ragged_picks_gather_then_tiled_on_cpu_and_ragged_dot_elsewhere(monkeypatch):
  moe, _ = _moe(16, 2)
  assert moe.expert_path("ragged", 15) == moe.experts_gather  # T·k < E: decode-sized
  assert jax.default_backend() == "cpu" and moe.expert_path("ragged", 16) == moe.experts_tiled
  monkeypatch.setattr(moe_lib.jax, "default_backend", lambda: "gpu")
  assert moe.expert_path("ragged", 16) == moe.experts_ragged
  for impl, path in (("tiled", moe.experts_tiled), ("ragged_dot", moe.experts_ragged), ("dense", moe.experts_dense)):
    assert moe.expert_path(impl, 4) == path  # explicit kernels are taken as asked
  with pytest.raises(ValueError, match="unknown MoE impl"):
    moe.expert_path("megablox", 64)
