"""MTP drafter on a tiny random target with one MTP module: MTP-1 is the target's own MTP prediction, training
equals a naive per-anchor loop over the module's whole-sequence forward, no leakage (later tokens, streams at
rows ≥ the anchor, the other document of a packed row), `propose` against argmax chaining, frozen target weights.

The naive reference runs `drafter.mtp` (the MTP module's own causal whole-sequence forward, `attend_rows`) on one
explicit sequence per block: [context entries of rows c..p−1 ; steps 1..k], reading its last row — an independent
path from the drafter's gathered-window steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters.config import mtp_config
from dsv4.drafters.context import FrozenTarget
from dsv4.drafters.features import TargetFeatures, gather_slots, make_blocks
from dsv4.drafters.losses import dspark_losses, loss_weights
from dsv4.drafters.mtp import MTPCache, MTPDrafter, jit_mtp_extend, jit_mtp_propose
from dsv4.errors import ConfigError
from dsv4.model import ModelConfig, Transformer
from tests.inference.spec_fixtures import built, sharp_target

TARGET = ModelConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=1, max_position_embeddings=1024,
                     moe_impl="dense")  # the reference MoE path: the quickest to compile, the drafter needs no other
T, G, D = 32, 3, TARGET.hidden_size
# Row 0 packs documents at rows 0..19 and 20..31; row 1 holds one document at rows 0..27, then padding.
DOC_SPANS = (((0, 20), (20, 32)), ((0, 28),))
# [B, A]: anchors inside and past the window (8), at a document's last and first token (20; row 1's 0).
ANCHORS = np.array([[5, 12, 19, 20, 26], [0, 1, 9, 17, 26]])


def packed_rows():
  segments, positions = np.zeros((2, T), np.int32), np.zeros((2, T), np.int32)
  for b, spans in enumerate(DOC_SPANS):
    for i, (s, e) in enumerate(spans):
      segments[b, s:e], positions[b, s:e] = i + 1, np.arange(e - s)
  tokens = np.random.default_rng(0).integers(2, TARGET.vocab_size, (2, T)).astype(np.int32)
  return tokens, segments, positions


def doc_start(b: int, row: int) -> int:
  return next(s for s, e in DOC_SPANS[b] if s <= row < e)


@pytest.fixture(scope="module")
def target():
  return built(lambda: sharp_target(TARGET))


@pytest.fixture(scope="module")
def frozen(target):
  return FrozenTarget.of(target)


@pytest.fixture(scope="module")
def rows(target):
  """(tokens, segments, positions) as numpy, and the jitted target forward's output on them."""
  tokens, segments, positions = packed_rows()
  graphdef, state = nnx.split(target)
  forward = jax.jit(lambda s, i, p, g: nnx.merge(graphdef, s).forward(i, with_mtp=True, positions_BT=p,
                                                                      segment_ids_BT=g))
  return tokens, segments, positions, forward(state, tokens, positions, segments)


def features(rows, tokens=None, streams=None):
  ids, segments, positions, out = rows
  ids = ids if tokens is None else tokens
  return TargetFeatures(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(segments), out.final_hidden_BTD,
                        streams_BTND=out.streams_BTND if streams is None else streams)


_make_blocks = jax.jit(make_blocks, static_argnums=6)


def blocks_of(rows, block_size, tokens=None):
  ids, segments, positions, _ = rows
  ids = ids if tokens is None else tokens
  return _make_blocks(ids, segments, positions, segments > 0, ANCHORS, np.ones(ANCHORS.shape), block_size)


@functools.cache
def drafter_of(block_size: int, from_target: Transformer) -> MTPDrafter:
  """MTP-1 is the target's module as is; the G = 3 drafter gets larger e_proj/h_proj weights (std 1/√D), so the
  embedding and the streams each visibly steer its steps."""
  drafter = MTPDrafter.from_target(mtp_config(hidden_size=D, block_size=block_size), from_target)
  if block_size > 1:
    k1, k2 = jax.random.split(jax.random.key(3))
    drafter.mtp.e_proj.kernel[...] = jax.random.normal(k1, (D, D)) / np.sqrt(D)
    drafter.mtp.h_proj.kernel[...] = jax.random.normal(k2, (D, D)) / np.sqrt(D)
  return drafter


@functools.cache
def logits_fn(drafter: MTPDrafter):
  graphdef, state = nnx.split(drafter)
  run = jax.jit(lambda s, feats, blocks, frozen: nnx.merge(graphdef, s).train_logits(feats, blocks, frozen)[0])
  return functools.partial(run, state)


@functools.cache
def module_fn(drafter: MTPDrafter):
  """(frozen, streams [T, N, D], ids [T]) -> (logits [T, V], streams [T, N, D]): the drafter's MTP module over
  one explicit sequence of entries (padded to T rows; causal, so padding is harmless)."""
  graphdef, state = nnx.split(drafter)

  @jax.jit
  def run(state, frozen, streams_LND, ids_L):
    pos = jnp.arange(T, dtype=jnp.int32)[None]
    hidden, streams = nnx.merge(graphdef, state).mtp(streams_LND[None], frozen.embed(ids_L)[None], None, pos, None)
    return frozen.head(hidden[0]), streams[0]

  return functools.partial(run, state)


def reference_chain(drafter, frozen, streams_TND, tokens_T, c: int, p: int, teacher: bool):
  """Logits [G, V] and tokens [G] of the block anchored at p (document start c) by the naive loop: step k runs the
  module on [entries (streams[s], tokens[s+1]) for s = c..p−1 ; steps 1..k] and reads the last row. Step k+1's
  token is tokens[p+k+1] (teacher) or the argmax of step k."""
  run = module_fn(drafter)
  seq_streams = [np.asarray(streams_TND[s]) for s in range(c, p)]
  seq_ids = [int(tokens_T[s + 1]) for s in range(c, p)]
  logits, drafts = [], []
  for k in range(drafter.config.block_size):
    n = len(seq_ids)
    pad = T - n
    streams = np.concatenate([np.stack(seq_streams), np.zeros((pad,) + seq_streams[0].shape, np.float32)])
    all_logits, out = run(frozen, streams, np.asarray(seq_ids + [0] * pad, np.int32))
    logits.append(np.asarray(all_logits[n - 1]))
    drafts.append(int(logits[-1].argmax()))
    seq_streams.append(np.asarray(out[n - 1]))
    seq_ids.append(int(tokens_T[p + k + 1]) if teacher else drafts[-1])
  return np.stack(logits), np.asarray(drafts)


def assert_slots(a, b, same):
  """Per slot [B, A, G]: identical logits where `same`, clearly different elsewhere."""
  a, b = np.asarray(a), np.asarray(b)
  for idx in np.ndindex(same.shape):
    if same[idx]:
      np.testing.assert_array_equal(a[idx], b[idx], err_msg=f"slot {idx} changed")
    else:
      assert np.abs(a[idx] - b[idx]).max() > 1e-3, f"slot {idx} did not change"


def p_of(b, a):
  return int(ANCHORS[b, a]), doc_start(b, int(ANCHORS[b, a]))


# --- tests -------------------------------------------------------------------------------------------------


def test_mtp1_is_the_targets_own_mtp_prediction(target, frozen, rows):
  """Slot 0 of MTP-1 (mtp_config defaults) at anchor p == the target's mtp_logits_KBTV[0] at row p−1."""
  drafter = drafter_of(1, target)
  assert drafter.config.block_size == 1
  got = np.asarray(logits_fn(drafter)(features(rows), blocks_of(rows, 1), frozen))
  want = np.asarray(rows[3].mtp_logits_KBTV[0])
  assert got.shape == ANCHORS.shape + (1, TARGET.vocab_size)
  for b, a in np.ndindex(ANCHORS.shape):
    p, c = p_of(b, a)
    if p > c:
      np.testing.assert_allclose(got[b, a, 0], want[b, p - 1], rtol=1e-5, atol=1e-5)
  assert np.isfinite(got).all()  # first-token anchors too


def test_train_logits_equal_naive_per_anchor_loop(target, frozen, rows):
  drafter = drafter_of(G, target)
  got = np.asarray(logits_fn(drafter)(features(rows), blocks_of(rows, G), frozen))
  assert np.isfinite(got).all()
  tokens, streams = rows[0], np.asarray(rows[3].streams_BTND)
  for b, a in np.ndindex(ANCHORS.shape):
    p, c = p_of(b, a)
    if p == c:  # first-token anchors: no row p−1 (supervision removed by valid_blocks)
      continue
    want, _ = reference_chain(drafter, frozen, streams[b], tokens[b], c, p, teacher=True)
    np.testing.assert_allclose(got[b, a], want, rtol=1e-5, atol=1e-5, err_msg=f"block {(b, a)}")


def test_valid_blocks_drop_first_token_anchors(rows):
  blocks = blocks_of(rows, G)
  kept = np.asarray(MTPDrafter.valid_blocks(blocks).valid_BAG)
  first = ANCHORS == np.array([[0, 0, 0, 20, 20], [0] * 5])
  assert not kept[first].any() and np.asarray(blocks.valid_BAG)[first].any()
  np.testing.assert_array_equal(kept[~first], np.asarray(blocks.valid_BAG)[~first])


def test_no_leakage_from_tokens_after_the_slot(target, frozen, rows):
  """Tokens at rows > 13 change: slot k of the block at p is bit-identical iff p + k ≤ 13."""
  fn = logits_fn(drafter_of(G, target))
  changed = rows[0].copy()
  changed[:, 14:] = (changed[:, 14:] + 5) % TARGET.vocab_size
  base = fn(features(rows), blocks_of(rows, G), frozen)
  got = fn(features(rows, tokens=changed), blocks_of(rows, G, tokens=changed), frozen)
  assert_slots(base, got, ANCHORS[..., None] + np.arange(G) <= 13)


def test_no_leakage_from_streams_at_or_after_the_anchor(target, frozen, rows):
  """Streams at rows ≥ 12 change: blocks anchored at p ≤ 12 are bit-identical, later ones (with a row p−1) not."""
  fn = logits_fn(drafter_of(G, target))
  streams = rows[3].streams_BTND
  noisy = streams.at[:, 12:].add(3.0 * jax.random.normal(jax.random.key(5), streams[:, 12:].shape))
  base = fn(features(rows), blocks_of(rows, G), frozen)
  got = fn(features(rows, streams=noisy), blocks_of(rows, G), frozen)
  first = np.array([[False, False, False, True, False], [True] + [False] * 4])  # zero streams, no context
  same = (ANCHORS <= 12) | first
  assert_slots(base, got, np.broadcast_to(same[..., None], same.shape + (G,)))
  # Row p−1 alone (p = 12) reaches that block's every slot: step 0 reads it and the chain carries it on.
  one = streams.at[0, 11].add(3.0)
  got = np.asarray(fn(features(rows, streams=one), blocks_of(rows, G), frozen))
  assert (np.abs(got[0, 1] - np.asarray(base)[0, 1]).max(-1) > 1e-3).all()


def test_no_leakage_across_documents_of_a_packed_row(target, frozen, rows):
  """Row 0's second document (rows 20..31) changes, tokens and streams: slots whose inputs all lie in the first
  document (p + k ≤ 19) are bit-identical, the second document's blocks change, row 1 is untouched."""
  fn = logits_fn(drafter_of(G, target))
  tokens = rows[0].copy()
  tokens[0, 20:] = (tokens[0, 20:] + 7) % TARGET.vocab_size
  streams = rows[3].streams_BTND
  noisy = streams.at[0, 20:].add(3.0 * jax.random.normal(jax.random.key(6), streams[0, 20:].shape))
  base = fn(features(rows), blocks_of(rows, G), frozen)
  got = fn(features(rows, tokens=tokens, streams=noisy), blocks_of(rows, G, tokens=tokens), frozen)
  same = ANCHORS[..., None] + np.arange(G) <= 19
  same[1] = True
  assert_slots(base, got, same)


def test_propose_equals_argmax_chaining_of_the_reference(target, frozen, rows):
  """Greedy `propose` from a cache filled in two `extend` calls == the naive loop feeding back its argmax."""
  drafter = drafter_of(G, target)
  tokens, streams = rows[0], rows[3].streams_BTND
  seqs, ctx_len = np.array([0, 1, 1, 0]), np.array([12, 17, 1, 7])  # single-document prefixes from row 0
  next_ids = jnp.asarray(np.concatenate([tokens[:, 1:], np.zeros((2, 1), np.int32)], 1)[seqs])
  extend = jit_mtp_extend(drafter)
  cache = MTPCache.zeros(len(seqs), T, TARGET.head_dim)
  cache = extend(cache, frozen, streams[seqs, :16], next_ids[:, :16], jnp.zeros(4, jnp.int32))
  cache = extend(cache, frozen, streams[seqs, 16:], next_ids[:, 16:], jnp.full(4, 16, jnp.int32))
  got = jit_mtp_propose(drafter)(cache, frozen, streams[seqs, ctx_len - 1], jnp.asarray(tokens[seqs, ctx_len]),
                                  jnp.asarray(ctx_len, jnp.int32))
  assert got.confidence_BG is None
  for i, (b, p) in enumerate(zip(seqs, ctx_len, strict=True)):
    logits, drafts = reference_chain(drafter, frozen, np.asarray(streams[b]), tokens[b], 0, int(p), teacher=False)
    np.testing.assert_array_equal(np.asarray(got.tokens_BG[i]), drafts)
    np.testing.assert_allclose(np.asarray(got.logits_BGV[i]), logits, rtol=1e-5, atol=1e-5)
  assert len(set(np.asarray(got.tokens_BG).ravel().tolist())) > 2  # not one repeated token


def test_bad_input_fails_before_compute(target, rows):
  no_mtp = TARGET.replace(num_nextn_predict_layers=0)
  with pytest.raises(ConfigError, match=r"drafter\.kind.*num_nextn_predict_layers=0"):
    MTPDrafter(mtp_config(hidden_size=D), no_mtp, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match=r"drafter\.kind.*mtp_config"):
    MTPDrafter(mtp_config(hidden_size=D).replace(kind="dspark"), TARGET, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match=r"drafter\.hidden_size"):
    MTPDrafter(mtp_config(hidden_size=64), TARGET, rngs=nnx.Rngs(0))
  drafter = drafter_of(G, target)
  feats = features(rows)
  feats.streams_BTND = None
  with pytest.raises(ValueError, match="streams_BTND is None"):
    drafter.train_logits(feats, blocks_of(rows, G), None)
  with pytest.raises(ValueError, match=r"prev_BAG.*block_size 3"):
    drafter.train_logits(features(rows), blocks_of(rows, 2), None)


@pytest.mark.parametrize("changes, field", [(dict(num_layers=2), "num_layers"),
                                            (dict(markov="markov", markov_rank=4), "markov"),
                                            (dict(confidence_head=True, alpha_conf=1.0), "confidence_head")])
def test_mtp_config_rejects_what_the_module_lacks(changes, field):
  with pytest.raises(ConfigError, match=rf"drafter\.{field}\b"):
    mtp_config(hidden_size=D, **changes)


def test_gradients_reach_the_mtp_module_not_the_frozen_target(target, frozen, rows):
  """MTP-1 (one step: the smallest backward to compile), its mtp_config loss (soft CE against the target)."""
  drafter = drafter_of(1, target)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  feats, blocks = features(rows), MTPDrafter.valid_blocks(blocks_of(rows, 1))

  @jax.jit
  def grads(params, frozen):
    def loss(params, frozen):  # the target's distribution of the token at p + 1: its logits at row p
      target_logits = frozen.head(gather_slots(feats.hidden_BTD, blocks.anchor_BA, 1))
      logits, _ = nnx.merge(graphdef, params, rest).train_logits(feats, blocks, frozen)
      out = dspark_losses(logits, target_logits, blocks.labels_BAG, blocks.valid_BAG, None,
                          **loss_weights(drafter.config))
      return out["loss"]
    return jax.grad(loss, argnums=(0, 1))(params, frozen)

  g_params, g_frozen = grads(params, frozen)
  assert not np.asarray(g_frozen.embed_VD).any() and not np.asarray(g_frozen.lm_head_DV).any()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g_params))
  mtp = g_params["mtp"]
  for name in ("enorm", "hnorm", "e_proj", "h_proj", "hc_head", "norm"):
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(mtp[name])), name
  for name in ("attn_hc", "attn", "ffn_hc", "ffn"):
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(mtp["block"][name])), name
