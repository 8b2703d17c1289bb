"""DSpark drafter properties on a tiny random target: no leakage past the anchor, the sequential head's
conditioning, `propose` against a naive slot-by-slot loop, the context cache, frozen target weights."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters import ContextKV, DrafterConfig, DSpark, FrozenTarget, dflash_config, jit_propose
from dsv4.drafters.losses import dspark_losses
from dsv4.model import ModelConfig, Transformer
from dsv4.model.transformer import jit_forward

TARGET = ModelConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=0, max_position_embeddings=1024)
SMALL = dict(block_size=4, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=48, target_layer_ids=(0, 2), markov_rank=8)
G, S = SMALL["block_size"], 24
ANCHORS = np.array([[3, 10, 17], [0, 8, 20]])  # [B, A]; anchor 0 sees no context at all


def config(kind: str) -> DrafterConfig:
  return dflash_config(**SMALL) if kind == "dflash" else DrafterConfig(**SMALL, markov=kind)


def built(make):
  """`make()` with its parameters initialised in one jitted call (eager init compiles every op separately)."""
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())


def make_drafter(kind: str) -> DSpark:
  drafter = DSpark(config(kind), TARGET, rngs=nnx.Rngs(0))
  if drafter.seq_head is not None:  # O(1) biases (the init's are ~1e-3), so the head visibly steers drafts
    head, r = drafter.seq_head, SMALL["markov_rank"]
    k1, k2 = jax.random.split(jax.random.key(100))
    head.w1[...] = jax.random.normal(k1, head.w1.shape)
    head.w2.kernel[...] = jax.random.normal(k2, head.w2.kernel.shape) / np.sqrt(r)
  return drafter


@functools.cache
def drafter_of(kind: str) -> DSpark:
  return built(functools.partial(make_drafter, kind))


@functools.cache
def logits_fn(kind: str):
  """Jitted (taps, frozen, prev_ids_BAG, ctx_len_BA) -> (logits, conf_logits), context K/V built inside."""
  graphdef, state = nnx.split(drafter_of(kind))

  @jax.jit
  def run(state, taps_BSLD, frozen, prev_BAG, ctx_len_BA):
    d = nnx.merge(graphdef, state)
    return d.block_logits(d.context_kv(taps_BSLD), frozen, prev_BAG, ctx_len_BA)

  return functools.partial(run, state)


@pytest.fixture(scope="module")
def target():
  return built(lambda: Transformer(TARGET, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def frozen(target):
  return FrozenTarget.of(target)


@pytest.fixture(scope="module")
def ids():
  return jnp.asarray(np.random.default_rng(0).integers(0, TARGET.vocab_size, (2, S)), jnp.int32)


@pytest.fixture(scope="module")
def taps_fn(target):
  forward = jit_forward(target, tap_layers=SMALL["target_layer_ids"])
  return lambda ids: forward(ids).taps_BTLD


def block_prev(ids, anchors=ANCHORS):
  """Teacher-forced previous tokens: ids[p + k] for slot k (slot 0: the anchor)."""
  return jnp.asarray(np.asarray(ids)[np.arange(2)[:, None, None], anchors[..., None] + np.arange(G)], jnp.int32)


def assert_blocks(a, b, same):
  """Per block [B, A]: identical logits where `same`, clearly different elsewhere."""
  a, b = np.asarray(a), np.asarray(b)
  for i, j in np.ndindex(same.shape):
    if same[i, j]:
      np.testing.assert_array_equal(a[i, j], b[i, j], err_msg=f"block {(i, j)} changed")
    else:
      assert np.abs(a[i, j] - b[i, j]).max() > 1e-4, f"block {(i, j)} did not change"


def test_frozen_target_is_the_targets_and_not_owned(target, frozen, ids):
  h = jax.random.normal(jax.random.key(1), (2, 3, TARGET.hidden_size))
  np.testing.assert_array_equal(np.asarray(frozen.head(h)), np.asarray(target.head(h)))
  np.testing.assert_array_equal(np.asarray(frozen.embed(ids)), np.asarray(target.embed_tokens(ids)))
  shapes = {tuple(v.shape) for _, v in nnx.to_flat_state(nnx.state(drafter_of("markov"), nnx.Param))}
  assert target.embed.shape not in shapes and target.lm_head.shape not in shapes


def test_no_leakage_from_tokens_after_the_anchor(taps_fn, frozen, ids):
  """Tokens after position 10 change: blocks anchored at ≤ 10 are bit-identical, later ones are not."""
  changed = ids.at[:, 11:].set((ids[:, 11:] + 5) % TARGET.vocab_size)
  prev, ctx_len = block_prev(ids), jnp.asarray(ANCHORS)
  a, conf_a = logits_fn("markov")(taps_fn(ids), frozen, prev, ctx_len)
  b, conf_b = logits_fn("markov")(taps_fn(changed), frozen, prev, ctx_len)
  assert np.isfinite(np.asarray(a)).all()
  assert_blocks(a, b, ANCHORS <= 10)
  assert_blocks(conf_a, conf_b, ANCHORS <= 10)


def test_context_visible_is_exactly_the_prefix_before_the_anchor(taps_fn, frozen, ids):
  taps = taps_fn(ids)
  prev, ctx_len = block_prev(ids), jnp.asarray(ANCHORS)
  noise = 3.0 * jax.random.normal(jax.random.key(2), taps.shape)
  base = logits_fn("markov")(taps, frozen, prev, ctx_len)[0]
  # Sequence 0's features from the anchor's own slot (10) on: its blocks at 3 and 10 cannot see them.
  after = taps.at[0, 10:].add(noise[0, 10:])
  assert_blocks(base, logits_fn("markov")(after, frozen, prev, ctx_len)[0], np.array([[True, True, False], [True] * 3]))
  # Slot 9 alone: seen by the blocks anchored at 10 and 17.
  before = taps.at[0, 9].add(noise[0, 9])
  got = logits_fn("markov")(before, frozen, prev, ctx_len)[0]
  assert_blocks(base, got, np.array([[True, False, False], [True] * 3]))


@pytest.mark.parametrize("kind", ["dflash", "markov", "rnn"])
def test_previous_token_reaches_slot_k_only_through_the_sequential_head(kind, taps_fn, frozen, ids):
  drafter, fn = drafter_of(kind), logits_fn(kind)
  taps, prev, ctx_len = taps_fn(ids), block_prev(ids), jnp.asarray(ANCHORS)
  k = 2
  changed = prev.at[..., k].set((prev[..., k] + 1) % TARGET.vocab_size)
  (a, conf_a), (b, conf_b) = fn(taps, frozen, prev, ctx_len), fn(taps, frozen, changed, ctx_len)
  a, b = np.asarray(a), np.asarray(b)
  np.testing.assert_array_equal(a[..., :k, :], b[..., :k, :])
  if kind == "dflash":
    np.testing.assert_array_equal(a, b)
    assert conf_a is None
    return
  assert (np.abs(a[..., k, :] - b[..., k, :]).max(-1) > 1e-3).all()
  if kind == "markov":  # exactly the bias difference W2(W1[new]) − W2(W1[old]); later slots untouched
    w1, w2 = np.asarray(drafter.seq_head.w1[...]), np.asarray(drafter.seq_head.w2.kernel[...])
    expect = w1[np.asarray(changed[..., k])] @ w2 - w1[np.asarray(prev[..., k])] @ w2
    np.testing.assert_allclose(b[..., k, :] - a[..., k, :], expect, atol=1e-4)
    np.testing.assert_array_equal(a[..., k + 1:, :], b[..., k + 1:, :])
  else:  # the RNN state carries x_{k−1} on to later slots
    assert (np.abs(a[..., k + 1:, :] - b[..., k + 1:, :]).max(-1) > 1e-4).all()
  conf_a, conf_b = np.asarray(conf_a), np.asarray(conf_b)  # the confidence head reads W1 x_{k−1} at slot k only
  np.testing.assert_array_equal(np.delete(conf_a, k, -1), np.delete(conf_b, k, -1))
  assert (np.abs(conf_a[..., k] - conf_b[..., k]) > 1e-6).all()


@pytest.mark.parametrize("kind", ["dflash", "markov", "rnn"])
def test_propose_equals_naive_teacher_forced_loop(kind, taps_fn, frozen, ids):
  """Greedy `propose` == running block_logits G times, feeding back its own argmax drafts as x_{k−1}.

  `propose` drafts one block per row: the six (sequence, anchor) pairs of ANCHORS as six rows."""
  graphdef, state = nnx.split(drafter_of(kind))
  taps = taps_fn(ids)
  anchor_BA = ids[jnp.arange(2)[:, None], jnp.asarray(ANCHORS)]

  @jax.jit
  def propose(state, taps, frozen):
    d = nnx.merge(graphdef, state)
    rows = lambda x: jnp.repeat(x, ANCHORS.shape[1], axis=1)  # row b·A + a holds sequence b
    ctx = d.context_kv(taps)
    return d.propose(ContextKV(rows(ctx.k_LBSJK), rows(ctx.v_LBSJK)), frozen, anchor_BA.reshape(-1),
                     jnp.asarray(ANCHORS.reshape(-1), jnp.int32))

  got = propose(state, taps, frozen)
  prev = np.zeros(ANCHORS.shape + (G,), np.int32)
  prev[..., 0] = np.asarray(anchor_BA)
  tokens, logits = np.zeros(ANCHORS.shape + (G,), np.int32), np.zeros(ANCHORS.shape + (G, TARGET.vocab_size))
  for k in range(G):
    step_logits, conf = logits_fn(kind)(taps, frozen, jnp.asarray(prev), jnp.asarray(ANCHORS))
    logits[..., k, :] = np.asarray(step_logits)[..., k, :]
    tokens[..., k] = logits[..., k, :].argmax(-1)
    if k + 1 < G:
      prev[..., k + 1] = tokens[..., k]
  np.testing.assert_array_equal(np.asarray(got.tokens_BG), tokens.reshape(-1, G))
  np.testing.assert_allclose(np.asarray(got.logits_BGV), logits.reshape(-1, G, TARGET.vocab_size), rtol=1e-5,
                             atol=1e-5)
  if kind == "dflash":
    assert got.confidence_BG is None
  else:
    assert len(set(tokens[0, 0])) > 1  # the drafts are not one repeated token
    np.testing.assert_allclose(np.asarray(got.confidence_BG), jax.nn.sigmoid(np.asarray(conf)).reshape(-1, G),
                               rtol=1e-5)


def test_context_cache_filled_in_pieces_equals_one_shot(taps_fn, frozen, ids):
  """A fixed 32-entry buffer written in two pieces holds the one-shot K/V; drafting from it is unchanged."""
  drafter = drafter_of("markov")
  ctx_kv = jax.jit(lambda t, p: drafter.context_kv(t, p))
  taps = taps_fn(ids)
  pos = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (2, S))
  whole = ctx_kv(taps, pos)
  c = SMALL
  cache = ContextKV.zeros(c["num_layers"], 2, 32, c["num_key_value_heads"], c["head_dim"])
  cache = cache.write(ctx_kv(taps[:, :12], pos[:, :12]), jnp.asarray([0, 0]))
  cache = cache.write(ctx_kv(taps[:, 12:], pos[:, 12:]), jnp.asarray([12, 12]))
  np.testing.assert_allclose(np.asarray(cache.k_LBSJK[:, :, :S]), np.asarray(whole.k_LBSJK), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(np.asarray(cache.v_LBSJK[:, :, :S]), np.asarray(whole.v_LBSJK), rtol=1e-6, atol=1e-6)
  assert not np.asarray(cache.k_LBSJK[:, :, S:]).any()
  ctx_len = jnp.asarray([12, 20], jnp.int32)
  anchor = ids[jnp.arange(2), ctx_len]
  propose = jit_propose(drafter_of("markov"))
  a, b = propose(whole, frozen, anchor, ctx_len), propose(cache, frozen, anchor, ctx_len)
  np.testing.assert_array_equal(np.asarray(a.tokens_BG), np.asarray(b.tokens_BG))
  np.testing.assert_allclose(np.asarray(a.logits_BGV), np.asarray(b.logits_BGV), rtol=1e-5, atol=1e-5)


def test_loss_trains_the_drafter_not_the_target(taps_fn, frozen, ids):
  drafter = drafter_of("markov")
  graphdef, state = nnx.split(drafter)
  taps, prev = taps_fn(ids), block_prev(ids)
  labels = jnp.concatenate([prev[..., 1:], prev[..., -1:]], -1)  # any tokens will do here
  target_logits = jax.random.normal(jax.random.key(4), prev.shape + (TARGET.vocab_size,))

  @jax.jit
  def grads(state, frozen):
    def loss(state, frozen):
      d = nnx.merge(graphdef, state)
      logits, conf = d.block_logits(d.context_kv(taps), frozen, prev, jnp.asarray(ANCHORS))
      return dspark_losses(logits, target_logits, labels, jnp.ones(prev.shape), conf)["loss"]
    return jax.grad(loss, argnums=(0, 1))(state, frozen)

  g_state, g_frozen = grads(state, frozen)
  assert not np.asarray(g_frozen.embed_VD).any() and not np.asarray(g_frozen.lm_head_DV).any()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g_state))  # the anchor-0 block too
  for name in ("mask_embed", "fc", "seq_head", "conf_head", "layers"):
    leaves = jax.tree.leaves(g_state[name])
    assert any(np.abs(np.asarray(x)).max() > 0 for x in leaves), name

