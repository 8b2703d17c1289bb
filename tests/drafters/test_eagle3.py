"""EAGLE-3 drafter on tiny shapes: training logits against a naive per-anchor chain in float64 numpy, no leakage
past the anchor or across documents, chain drafting, config errors, gradients.

Taps and the frozen embedding/head are random arrays (the drafter only reads them; no target is built), and the
drafter's kernels are redrawn at std 1/√fan_in so every input visibly moves the logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters.config import eagle3_config
from dsv4.drafters.context import FrozenTarget
from dsv4.drafters.eagle3 import Eagle3, jit_eagle3_propose, previous_taps
from dsv4.drafters.features import TargetFeatures, make_blocks
from dsv4.drafters.losses import dspark_losses, loss_weights
from dsv4.errors import ConfigError
from dsv4.model import ModelConfig
from dsv4.model.layers import Linear

TARGET = ModelConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=0, max_position_embeddings=1024)
SMALL = dict(block_size=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
             intermediate_size=48, target_layer_ids=(0, 2))
CFG = eagle3_config(**SMALL)
G, T, V, D, L = CFG.block_size, 20, TARGET.vocab_size, CFG.hidden_size, CFG.num_taps
# Two packed rows of two documents each (row 1 ends in 2 padding tokens); segment ids and document positions.
SEGMENTS = np.array([[1] * 9 + [2] * 11, [1] * 12 + [2] * 6 + [0] * 2], np.int32)
# Anchors: document starts (0, 9, 12: no feature at p−1, no context), chains running into the next document or
# the padding (5, 10, 15), and inner ones. p + G − 1 < T everywhere so every slot's data token exists.
ANCHORS = np.array([[0, 5, 9, 14], [3, 10, 12, 15]], np.int32)


def doc_positions(seg):
  pos = np.zeros_like(seg)
  for b, t in np.ndindex(seg.shape):
    pos[b, t] = 0 if t == 0 or seg[b, t] != seg[b, t - 1] else pos[b, t - 1] + 1
  return pos


POSITIONS = doc_positions(SEGMENTS)
DOC_START = ANCHORS - POSITIONS[np.arange(2)[:, None], ANCHORS]


def randomized(make):
  """`make()` initialised in one jitted call, every kernel redrawn N(0, 1/fan_in)."""
  def init():
    d = make()
    linears = [m for _, m in nnx.iter_graph(d) if isinstance(m, Linear)]
    for i, m in enumerate(linears):
      m.kernel[...] = jax.random.normal(jax.random.key(i), m.kernel.shape) / np.sqrt(m.kernel.shape[0])
    return nnx.state(d)
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  return nnx.merge(graphdef, jax.jit(init)())


@functools.cache
def drafter() -> Eagle3:
  return randomized(lambda: Eagle3(CFG, TARGET, rngs=nnx.Rngs(0)))


@functools.cache
@jax.jit
def data():
  """(tokens, taps, frozen) for the packed rows."""
  k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
  tokens = jax.random.randint(k1, (2, T), 0, V, jnp.int32)
  taps = jax.random.normal(k2, (2, T, L, D))
  frozen = FrozenTarget(jax.random.normal(k3, (V, D)), jax.random.normal(k4, (D, V)) / np.sqrt(D))
  return tokens, taps, frozen


def features(tokens, taps):
  return TargetFeatures(tokens, jnp.asarray(POSITIONS), jnp.asarray(SEGMENTS), jnp.zeros(taps.shape[:2] + (D,)),
                        taps)


def blocks_of(tokens):
  keep = jnp.ones(ANCHORS.shape, jnp.int32)
  return make_blocks(tokens, jnp.asarray(SEGMENTS), jnp.asarray(POSITIONS), jnp.asarray(SEGMENTS > 0, jnp.int32),
                     jnp.asarray(ANCHORS), keep, G)


@functools.cache
def train_fn():
  """Jitted (tokens, taps, frozen) -> (logits [B, A, G, V], valid [B, A, G], loss, (grad state, grad frozen)):
  blocks built from the tokens, eagle3_config's loss against fixed random target logits. One compiled function
  serves every test that trains (the backward pass costs little at these sizes; compiling twice would not)."""
  graphdef, state = nnx.split(drafter())
  target_logits = jax.random.normal(jax.random.key(4), ANCHORS.shape + (G, V))

  def loss(state, frozen, tokens, taps):
    blocks = blocks_of(tokens)
    logits, conf = nnx.merge(graphdef, state).train_logits(features(tokens, taps), blocks, frozen)
    assert conf is None
    terms = dspark_losses(logits, target_logits, blocks.labels_BAG, blocks.valid_BAG, **loss_weights(CFG))
    return terms["loss"], (logits, blocks.valid_BAG)

  @jax.jit
  def run(state, tokens, taps, frozen):
    (value, (logits, valid)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(state, frozen, tokens,
                                                                                             taps)
    return logits, valid, value, grads

  return functools.partial(run, state)


# --- the independent reference: one anchor, one step at a time, float64 numpy --------------------------------
def np_weights(d: Eagle3, frozen: FrozenTarget):
  f = lambda x: np.asarray(x[...], np.float64)
  y = d.layer
  return dict(fc=f(d.fc.kernel), e_norm=f(y.embed_norm.weight), h_norm=f(y.hidden_norm.weight), wq=f(y.wq.kernel),
              wk=f(y.wk.kernel), wv=f(y.wv.kernel), wo=f(y.wo.kernel), post=f(y.post_norm.weight),
              gate=f(y.mlp.gate_proj.kernel), up=f(y.mlp.up_proj.kernel), down=f(y.mlp.down_proj.kernel),
              final=f(d.norm.weight), embed=f(frozen.embed_VD), head=f(frozen.lm_head_DV))


def rms(x, w):
  return w * x / np.sqrt(np.mean(x * x, -1, keepdims=True) + CFG.rms_norm_eps)


def rope(x_HK, pos):
  """Interleaved pairs (2i, 2i+1) rotated by pos·θ^(−2i/K)."""
  K = x_HK.shape[-1]
  ang = pos * CFG.rope_theta ** (-np.arange(0, K, 2) / K)
  even, odd = x_HK[:, 0::2], x_HK[:, 1::2]
  out = np.empty_like(x_HK)
  out[:, 0::2], out[:, 1::2] = even * np.cos(ang) - odd * np.sin(ang), odd * np.cos(ang) + even * np.sin(ang)
  return out


def qkv(W, tok, h, pos):
  H, J, K = CFG.num_attention_heads, CFG.num_key_value_heads, CFG.head_dim
  u = np.concatenate([rms(W["embed"][tok], W["e_norm"]), rms(h, W["h_norm"])])
  return rope((u @ W["wq"]).reshape(H, K), pos), rope((u @ W["wk"]).reshape(J, K), pos), (u @ W["wv"]).reshape(J, K)


def reference_chain(W, tokens, taps, b, p, feed):
  """Logits [G, V] of the block at row b, anchor p: context entries c..p−1 of its document, then G layer steps
  fed x_0 = tokens[p] and x_k = feed(k, logits of slot k−1)."""
  c = DOC_START[b, ANCHORS[b] == p][0]
  H, R = CFG.num_attention_heads, CFG.num_attention_heads // CFG.num_key_value_heads
  feat = lambda t: W["fc"].T @ taps[b, t - 1].reshape(-1) if t > c else np.zeros(D)  # f_c = 0
  keys, vals = [], []
  for t in range(c, p):
    _, k, v = qkv(W, tokens[b, t], feat(t), POSITIONS[b, t])
    keys.append(k)
    vals.append(v)
  h, tok, out = feat(p), tokens[b, p], []
  for k in range(G):
    q, kk, vv = qkv(W, tok, h, POSITIONS[b, p] + k)
    keys.append(kk)
    vals.append(vv)
    Ks, Vs = np.stack(keys), np.stack(vals)              # [S, J, K]
    o = np.zeros((H, CFG.head_dim))
    for i in range(H):
      s = Ks[:, i // R] @ q[i] / np.sqrt(CFG.head_dim)
      a = np.exp(s - s.max())
      o[i] = (a / a.sum()) @ Vs[:, i // R]
    h = h + o.reshape(-1) @ W["wo"]
    x = rms(h, W["post"])
    g = x @ W["gate"]
    h = h + (g / (1 + np.exp(-g)) * (x @ W["up"])) @ W["down"]
    out.append(rms(h, W["final"]) @ W["head"])
    tok = feed(k + 1, out[-1]) if k + 1 < G else None
  return np.stack(out)


def reference_all(feed_of):
  tokens, taps, frozen = data()
  W = np_weights(drafter(), frozen)
  tokens_np, taps_np = np.asarray(tokens), np.asarray(taps, np.float64)
  return np.stack([np.stack([reference_chain(W, tokens_np, taps_np, b, p, feed_of(b, p)) for p in ANCHORS[b]])
                   for b in range(2)])


# --- tests ---------------------------------------------------------------------------------------------------
def test_train_logits_equal_naive_teacher_forced_chain():
  tokens, taps, frozen = data()
  logits = train_fn()(tokens, taps, frozen)[0]
  tok = np.asarray(tokens)
  expect = reference_all(lambda b, p: lambda k, _: tok[b, p + k])  # the data tokens as the drafted ones
  assert logits.shape == (2, ANCHORS.shape[1], G, V) and logits.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(logits), expect, rtol=1e-5, atol=1e-5)


def assert_slots(a, b, same):
  """Per slot [B, A, G]: identical logits where `same`, clearly different where `same` is False (None: skip)."""
  a, b = np.asarray(a), np.asarray(b)
  for i in np.ndindex(same.shape):
    if same[i] is None:
      continue
    if same[i]:
      np.testing.assert_array_equal(a[i], b[i], err_msg=f"slot {i} changed")
    else:
      assert np.abs(a[i] - b[i]).max() > 1e-3, f"slot {i} did not change"


def test_no_leakage_past_the_anchor_or_across_documents():
  tokens, taps, frozen = data()
  fn = train_fn()
  base, valid = fn(tokens, taps, frozen)[:2]
  rows = np.arange(T)
  slot_row = ANCHORS[..., None] + np.arange(G)  # row of slot k's input token, p + k
  # Tokens after a per-row cutoff: slot k is unchanged iff p + k ≤ cutoff.
  cut = np.array([11, 14])
  later = jnp.asarray(rows[None] > cut[:, None])
  got = fn(jnp.where(later, (tokens + 1) % V, tokens), taps, frozen)[0]
  assert_slots(base, got, (slot_row <= cut[:, None, None]).astype(object))
  # Taps at rows ≥ cutoff: a block reads taps[c..p−1], so it is unchanged iff p ≤ cutoff or p = c (row 1's block
  # at 12 starts its document: the changed taps at 10, 11 belong to the previous one).
  cut = np.array([9, 10])
  noisy = jnp.where(jnp.asarray(rows[None] >= cut[:, None])[..., None, None], taps + 1.0, taps)
  got = fn(tokens, noisy, frozen)[0]
  same = (ANCHORS <= cut[:, None]) | (ANCHORS == DOC_START)
  assert not same.all()
  assert_slots(base, got, np.broadcast_to(same[..., None], slot_row.shape).astype(object))
  # Everything (tokens and taps) of one document: the other document's supervised slots are unchanged.
  valid = np.asarray(valid) > 0
  for doc in (1, 2):
    inside = jnp.asarray(SEGMENTS == doc)
    got = fn(jnp.where(inside, (tokens + 3) % V, tokens), jnp.where(inside[..., None, None], -taps, taps), frozen)[0]
    anchor_doc = SEGMENTS[np.arange(2)[:, None], ANCHORS]
    same = np.where(valid, anchor_doc[..., None] != doc, None)   # unsupervised slots may read the next document
    assert_slots(base, got, same)


@functools.cache
def propose_inputs():
  drafter()  # build the cached drafter outside the trace: built first inside it, its weights would be tracers
  return jax.jit(_propose_inputs)(*data())


def _propose_inputs(tokens, taps, frozen):
  """One inference sequence per block: its document's entries from buffer row 0, ctx_len = p − c."""
  idx = np.minimum(DOC_START.reshape(-1)[:, None] + np.arange(T), T - 1)   # [8, T] rows of each block's document on
  b = np.repeat(np.arange(2), ANCHORS.shape[1])[:, None]
  tok, tp = tokens[b, idx], taps[b, idx]
  pos, seg = jnp.asarray(POSITIONS[b, idx]), jnp.asarray(SEGMENTS[b, idx])
  prev = previous_taps(tp, pos, seg)
  ctx_len = jnp.asarray((ANCHORS - DOC_START).reshape(-1))
  ctx_kv = drafter().context_kv(frozen, tok, prev, pos)
  prev_at_anchor = prev[jnp.arange(prev.shape[0]), ctx_len]       # taps[p−1], zeros at a document start
  return ctx_kv, frozen, prev_at_anchor, tok[jnp.arange(tok.shape[0]), ctx_len], ctx_len


def test_propose_greedy_equals_argmax_chain_and_sampling_is_per_key():
  args = propose_inputs()
  got = jit_eagle3_propose(drafter())(*args)
  assert got.confidence_BG is None
  expect = reference_all(lambda b, p: lambda k, logits: int(np.argmax(logits)))  # feeds back its argmax
  tokens = expect.argmax(-1).reshape(-1, G)
  np.testing.assert_array_equal(np.asarray(got.tokens_BG), tokens)
  np.testing.assert_allclose(np.asarray(got.logits_BGV), expect.reshape(-1, G, V), rtol=1e-5, atol=1e-5)
  assert len(set(tokens.ravel())) > G   # the drafts are not one repeated token
  # Sampled: the same key gives the same drafts, another key others; the logits are the chain fed those drafts.
  sample = jit_eagle3_propose(drafter(), temperature=1.0)
  a, a2, c = (sample(*args, key=jax.random.key(s)) for s in (1, 1, 2))
  np.testing.assert_array_equal(np.asarray(a.tokens_BG), np.asarray(a2.tokens_BG))
  assert (np.asarray(a.tokens_BG) != np.asarray(c.tokens_BG)).any()
  drawn = np.asarray(a.tokens_BG).reshape(2, -1, G)
  expect = reference_all(lambda b, p: lambda k, _: drawn[b, list(ANCHORS[b]).index(p), k - 1])
  np.testing.assert_allclose(np.asarray(a.logits_BGV), expect.reshape(-1, G, V), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="PRNG key"):
    drafter().propose(*args, temperature=1.0)


@pytest.mark.parametrize("changes, field", [
    (dict(num_layers=2), "num_layers"),
    (dict(markov="markov", markov_rank=8), "markov"),
    (dict(confidence_head=True), "confidence_head"),
])
def test_bad_eagle3_config_names_the_field(changes, field):
  with pytest.raises(ConfigError, match=rf"drafter\.{field}\b.*eagle3"):
    eagle3_config(**SMALL, **changes)


def test_bad_inputs_fail_before_compute():
  c = eagle3_config(**SMALL)
  assert (c.kind, c.num_layers, c.alpha_soft_ce, c.alpha_ce, c.alpha_tv, c.alpha_conf) == ("eagle3", 1, 1.0, 0, 0, 0)
  np.testing.assert_allclose(np.exp(-np.arange(4) / c.decay), 0.8 ** np.arange(4), rtol=1e-12)
  with pytest.raises(ConfigError, match=r"drafter\.target_layer_ids.*\[3\]"):
    Eagle3(c.replace(target_layer_ids=(0, 3)), TARGET, rngs=nnx.Rngs(0))
  with pytest.raises(ConfigError, match=r"drafter\.kind.*eagle3_config"):
    Eagle3(c.replace(kind="dspark", num_layers=1), TARGET, rngs=nnx.Rngs(0))
  tokens, taps, frozen = data()
  d = drafter()  # built outside the trace: the cached drafter must not be created from tracers
  with pytest.raises(ValueError, match="feats.taps_BTLD has 1 taps.*target_layer_ids"):  # raised while tracing
    jax.eval_shape(lambda t, x: d.train_logits(features(t, x), blocks_of(t), frozen), tokens, taps[:, :, :1])


def test_loss_trains_fc_and_the_layer_not_the_target():
  _, _, value, (g_state, g_frozen) = train_fn()(*data())
  assert np.isfinite(float(value)) and float(value) > 0
  assert not np.asarray(g_frozen.embed_VD).any() and not np.asarray(g_frozen.lm_head_DV).any()
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g_state))  # document-start anchors too
  for name in ("fc", "layer", "norm"):
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g_state[name])), name
  for name in ("wq", "wk", "wv", "wo", "embed_norm", "hidden_norm", "mlp"):
    assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(g_state["layer"][name])), name
