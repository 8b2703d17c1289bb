"""DSpark with V4 drafter layers (mHC streams, sliding-window context attention, MoE FFN) on tiny shapes: the
gathered window against block_attention with a tightened start, all blocks of packed rows against a naive loop
that runs each block alone on only its visible context entries, leakage past the window / the anchor / the
document start, greedy `propose` against that loop fed its own drafts, gradients, config validation.

Every jitted function is compiled once and reused (train logits and gradients share one compile)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters import ContextKV, DrafterConfig, DSpark, FrozenTarget
from dsv4.drafters.attention import block_attention
from dsv4.drafters.features import TargetFeatures, make_blocks
from dsv4.drafters.losses import dspark_losses
from dsv4.drafters.v4_layer import V4Layer, window_attention
from dsv4.errors import ConfigError
from dsv4.model import ModelConfig
from dsv4.model.layers import FrozenState

TARGET = ModelConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=0, max_position_embeddings=1024)
W = 6  # sliding window
V4 = dict(layer_type="v4", block_size=4, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
          head_dim=8, target_layer_ids=(0, 2), markov_rank=8, n_routed_experts=8, num_experts_per_tok=2,
          moe_intermediate_size=16, n_shared_experts=1, hc_mult=3, sliding_window=W, swiglu_limit=10.0)
G, S, L, D, V = V4["block_size"], 24, 2, 32, TARGET.vocab_size
# Row 0 packs two documents, [0, 10) and [10, 24); row 1 is one document. Anchors: the first token of a
# document (no context), windows cut by the document start, windows cut by W.
SEGMENTS = np.array([[1] * 10 + [2] * 14, [1] * 24])
ANCHORS = np.array([[3, 9, 12, 20], [0, 5, 8, 20]])
POSITIONS = np.array([list(range(10)) + list(range(14)), list(range(24))])
DOC_START = ANCHORS - np.take_along_axis(POSITIONS, ANCHORS, axis=1)


def built(make):
  """`make()` with its parameters initialised in one jitted call (eager init compiles every op separately)."""
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())


@functools.cache
def drafter() -> DSpark:
  def make():
    d = DSpark(DrafterConfig(**V4), TARGET, rngs=nnx.Rngs(0))
    head, r = d.seq_head, V4["markov_rank"]  # O(1) sequential-head biases, so drafts visibly depend on them
    k1, k2 = jax.random.split(jax.random.key(100))
    head.w1[...] = jax.random.normal(k1, head.w1.shape)
    head.w2.kernel[...] = jax.random.normal(k2, head.w2.kernel.shape) / np.sqrt(r)
    return d

  return built(make)


@functools.cache
def data():
  """(frozen target, tokens [B, S], taps [B, S, L, D]): random arrays stand in for the target's (numpy, so that
  the tests index them without compiling an eager op per index)."""
  rng = np.random.default_rng(0)
  frozen = FrozenTarget(jnp.asarray(rng.normal(size=(V, D)), jnp.float32),
                        jnp.asarray(rng.normal(size=(D, V)) / np.sqrt(D), jnp.float32))
  return frozen, rng.integers(0, V, (2, S)).astype(np.int32), rng.normal(size=(2, S, L, D)).astype(np.float32)


def blocks_of(tokens):
  return make_blocks(tokens, jnp.asarray(SEGMENTS), jnp.asarray(POSITIONS), jnp.ones((2, S), jnp.int32),
                     jnp.asarray(ANCHORS), jnp.ones(ANCHORS.shape, jnp.int32), G)


def features(tokens, taps):
  return TargetFeatures(tokens, jnp.asarray(POSITIONS), jnp.asarray(SEGMENTS), None, taps)


@functools.cache
def train_fn():
  """Jitted (frozen, tokens, taps) -> ((logits, conf), (d loss/d drafter params, d loss/d frozen target)): the
  training interface on every block of the packed rows, and the DSpark loss's gradients (one compile for both)."""
  graphdef, params, rest = nnx.split(drafter(), nnx.Param, ...)
  target_logits = np.random.default_rng(4).normal(size=ANCHORS.shape + (G, V)).astype(np.float32)

  @jax.jit
  def run(params, frozen, tokens, taps):
    def loss(params, frozen):
      blocks = blocks_of(tokens)
      logits, conf = nnx.merge(graphdef, params, rest).train_logits(features(tokens, taps), blocks, frozen)
      out = dspark_losses(logits, target_logits, blocks.labels_BAG, blocks.valid_BAG, conf)
      return out["loss"], (logits, conf)

    grads, outputs = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, frozen)
    return outputs, grads

  return functools.partial(run, params)


def train_logits(frozen, tokens, taps):
  return tuple(map(np.asarray, train_fn()(frozen, tokens, taps)[0]))


@functools.cache
def one_block_fn():
  """Jitted (frozen, taps [W, L, D], positions [W], n, prev [G], anchor_pos) -> (logits [G, V], conf [G]): one block
  alone, its context the first n of W entries (W ≥ this context's length: no window, no document start)."""
  graphdef, state = nnx.split(drafter())

  @jax.jit
  def run(state, frozen, taps, pos, n, prev, anchor_pos):
    d = nnx.merge(graphdef, state)
    logits, conf = d.block_logits(d.context_kv(taps[None], pos[None]), frozen, prev[None, None], n[None, None],
                                  anchor_pos_BA=anchor_pos[None, None])
    return logits[0, 0], conf[0, 0]

  return functools.partial(run, state)


def naive_block(taps_SLD, pos_S, lo: int, hi: int, prev_G, anchor_pos: int):
  """A block run alone on a context of exactly the entries lo ≤ s < hi (hi − lo ≤ W), padded with noise entries
  that sit past ctx_len to a fixed W entries so that one compile serves every block."""
  frozen, _, _ = data()
  n = hi - lo
  assert 0 <= n <= W
  noise = np.random.default_rng(lo * 100 + hi).normal(scale=5.0, size=(W - n, L, D))
  ctx = np.concatenate([np.asarray(taps_SLD[lo:hi]), noise]).astype(np.float32)
  pos = np.concatenate([pos_S[lo:hi], 1000 + np.arange(W - n)]).astype(np.int32)
  return one_block_fn()(frozen, ctx, pos, np.int32(n), np.asarray(prev_G, np.int32), np.int32(anchor_pos))


def visible(b: int, a: int) -> tuple[int, int]:
  """[lo, hi): the rows block (b, a) may see: its own document, at most W entries before the anchor."""
  return max(DOC_START[b, a], ANCHORS[b, a] - W), ANCHORS[b, a]


def test_window_is_block_attention_with_a_tightened_start():
  """The per-block gathered window (W < S) equals block_attention over the whole context with start
  max(ctx_start, ctx_len − W): starts that the window cuts, that the document cuts, contexts shorter than W,
  empty contexts."""
  B, A, Gq, H, J, K, Sc = 2, 5, 3, 4, 2, 8, 16
  rng = np.random.default_rng(3)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  q, k_blk, v_blk = normal(B, A, Gq, H, K), normal(B, A, Gq, J, K), normal(B, A, Gq, J, K)
  k_ctx, v_ctx = normal(B, Sc, J, K), normal(B, Sc, J, K)
  ctx_len = np.array([[0, 3, 9, 16, 12], [5, 6, 16, 2, 10]], np.int32)
  ctx_start = np.array([[0, 0, 7, 2, 12], [0, 1, 0, 2, 8]], np.int32)
  lo = np.maximum(ctx_start, ctx_len - W)
  got, want = jax.jit(lambda *a: (window_attention(*a, ctx_start, ctx_len, W, K ** -0.5),
                                  block_attention(*a, lo, ctx_len, K ** -0.5)))(q, k_blk, v_blk, k_ctx, v_ctx)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_block_logits_equal_naive_per_block_loop():
  """All blocks of two packed rows at once (training interface, gathered windows) == each block alone on its
  visible entries [max(doc start, anchor − W), anchor): checks the window and the document boundaries."""
  frozen, tokens, taps = data()
  logits, conf = train_logits(frozen, tokens, taps)
  assert np.isfinite(logits).all()
  assert tokens.shape[1] >= ANCHORS.max() + G  # every block's teacher-forced tokens exist
  for b, a in np.ndindex(ANCHORS.shape):
    p = ANCHORS[b, a]
    want_logits, want_conf = naive_block(taps[b], POSITIONS[b], *visible(b, a), tokens[b, p:p + G], POSITIONS[b, p])
    np.testing.assert_allclose(logits[b, a], np.asarray(want_logits), rtol=1e-5, atol=1e-5, err_msg=f"block {(b, a)}")
    np.testing.assert_allclose(conf[b, a], np.asarray(want_conf), rtol=1e-5, atol=1e-5)


def test_no_leakage_outside_the_window_the_document_or_past_the_anchor():
  """One context entry perturbed at a time: a block changes iff the entry is in its [lo, hi)."""
  frozen, tokens, taps = data()
  base = train_logits(frozen, tokens, taps)[0]
  # (row, entry): older than block (0, 1)'s window; the anchor's own entry of (0, 1); the first entry of
  # document 2 (after (0, 1)'s anchor); in document 1, inside (0, 2)'s window but before its document; older than
  # (1, 3)'s window and after the other anchors; (1, 3)'s newest entry; in the windows of (1, 1) and (1, 2).
  for b, s in ((0, 2), (0, 9), (0, 10), (0, 8), (1, 13), (1, 19), (1, 4)):
    changed = taps.copy()
    changed[b, s] += 3.0
    got = train_logits(frozen, tokens, changed)[0]
    for bb, a in np.ndindex(ANCHORS.shape):
      lo, hi = visible(bb, a)
      if bb == b and lo <= s < hi:
        assert np.abs(got[bb, a] - base[bb, a]).max() > 1e-4, f"entry {(b, s)} did not reach block {(bb, a)}"
      else:
        np.testing.assert_array_equal(got[bb, a], base[bb, a], err_msg=f"entry {(b, s)} leaked into {(bb, a)}")


def test_propose_equals_teacher_forced_naive_blocks():
  """Greedy `propose` (one block per row: the eight (sequence, anchor) pairs, the row's whole prefix cached as
  context, positions = row indices) == each block alone on its window, run G times with its own argmax drafts
  fed back as x_{k−1}."""
  frozen, tokens, taps = data()
  graphdef, state = nnx.split(drafter())
  anchor_BA = np.take_along_axis(tokens, ANCHORS, axis=1)
  rows = np.broadcast_to(np.arange(S), (2, S))

  @jax.jit
  def propose(state, frozen, taps):
    d = nnx.merge(graphdef, state)
    rep = lambda x: jnp.repeat(x, ANCHORS.shape[1], axis=1)  # row b·A + a holds sequence b
    ctx = d.context_kv(taps, jnp.asarray(rows, jnp.int32))
    return d.propose(ContextKV(rep(ctx.k_LBSJK), rep(ctx.v_LBSJK)), frozen, anchor_BA.reshape(-1),
                     jnp.asarray(ANCHORS.reshape(-1), jnp.int32))

  got = jax.tree.map(np.asarray, propose(state, frozen, taps))
  for (b, a), i in zip(np.ndindex(ANCHORS.shape), range(ANCHORS.size), strict=True):
    p = ANCHORS[b, a]
    prev = np.full(G, anchor_BA[b, a], np.int32)
    for k in range(G):
      logits, conf = map(np.asarray, naive_block(taps[b], rows[b], max(0, p - W), p, prev, p))
      draft = int(np.argmax(logits[k]))
      np.testing.assert_allclose(got.logits_BGV[i, k], logits[k], rtol=1e-5, atol=1e-5, err_msg=f"{(b, a, k)}")
      assert got.tokens_BG[i, k] == draft, (b, a, k)
      if k + 1 < G:
        prev[k + 1] = draft
    np.testing.assert_allclose(got.confidence_BG[i], 1 / (1 + np.exp(-conf)), rtol=1e-5)
  assert len(set(got.tokens_BG[1].tolist())) > 1  # the drafts are not one repeated token


def test_gradients_reach_experts_router_and_hyper_connections_not_the_target():
  d = drafter()
  assert all(isinstance(layer, V4Layer) for layer in d.layers)
  bias = nnx.to_flat_state(nnx.state(d, FrozenState))  # the routing bias: state, never a parameter
  assert [tuple(map(str, p))[-2:] for p, _ in bias] == [("ffn", "bias")] * V4["num_layers"]
  frozen, tokens, taps = data()
  g_params, g_frozen = train_fn()(frozen, tokens, taps)[1]
  assert not np.asarray(g_frozen.embed_VD).any() and not np.asarray(g_frozen.lm_head_DV).any()
  flat = {tuple(map(str, p)): np.asarray(v) for p, v in nnx.to_flat_state(g_params)}
  assert all(np.isfinite(g).all() for g in flat.values())  # the no-context block (anchor 0) too
  expect = [("hc_head", "fn"), ("hc_head", "base"), ("fc",), ("mask_embed",)]
  for n in range(V4["num_layers"]):
    layer = ("layers", str(n))
    expect += [layer + ("ffn", w) for w in ("w_gate", "w_up", "w_down", "router", "shared")]
    expect += [layer + (hc, w) for hc in ("attn_hc", "ffn_hc") for w in ("fn", "base", "scale")]
    expect += [layer + ("attn", w) for w in ("wq", "wk", "wv", "wo")]
  for prefix in expect:
    leaves = [g for path, g in flat.items() if path[:len(prefix)] == prefix]
    assert leaves and any(np.abs(g).max() > 0 for g in leaves), prefix


@pytest.mark.parametrize("changes, field", [
    (dict(n_routed_experts=0), "n_routed_experts"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(moe_intermediate_size=-16), "moe_intermediate_size"),
    (dict(n_shared_experts=-1), "n_shared_experts"),
    (dict(hc_mult=0), "hc_mult"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(sliding_window=2.5), "sliding_window"),
])
def test_bad_v4_values_name_the_field(changes, field):
  with pytest.raises(ConfigError, match=rf"drafter\.{field}\b"):
    DrafterConfig(**{**V4, **changes})


def test_dense_defaults_unchanged():
  """The new fields only shape v4 layers: a dense config with defaults still builds dense layers, no streams."""
  cfg = DrafterConfig(**{**V4, "layer_type": "dense", "intermediate_size": 48})
  d = nnx.eval_shape(lambda: DSpark(cfg, TARGET, rngs=nnx.Rngs(0)))
  assert d.hc_head is None and not any(isinstance(layer, V4Layer) for layer in d.layers)
  assert not nnx.to_flat_state(nnx.state(d, FrozenState))
