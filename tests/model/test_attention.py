"""Whole `Attention.__call__` (sliding, CSA, HCA) against transformers' DeepseekV4Attention, and causality."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.model.attention import Attention
from dsv4.model.config import ModelConfig, YarnConfig

torch = pytest.importorskip("torch")
hf_cfg = pytest.importorskip("transformers.models.deepseek_v4.configuration_deepseek_v4")
hf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

DM, H, HD, ROPE, QLORA, G, OLORA = 64, 4, 32, 16, 32, 2, 16
WINDOW, TOPK, IH, ID = 32, 8, 16, 16  # ≥ 16 indexer heads: no score ties in the reference's top-k
EPS = 1e-6
YARN = YarnConfig(16.0, 64, 32.0, 1.0)  # short original length: YaRN changes frequencies at these positions
KINDS = {"sliding": 0, "csa": 4, "hca": 128}
LAYER_TYPES = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
B, S = 2, 300  # HCA: 2 entries; CSA: 75 entries > TOPK


def _cfg():
  return ModelConfig(vocab_size=64, hidden_size=DM, num_hidden_layers=3, compress_ratios=(0, 4, 128),
                     num_attention_heads=H, head_dim=HD, q_lora_rank=QLORA, qk_rope_head_dim=ROPE, o_groups=G,
                     o_lora_rank=OLORA, sliding_window=WINDOW, yarn=YARN, index_n_heads=IH, index_head_dim=ID,
                     index_topk=TOPK, rms_norm_eps=EPS, n_routed_experts=4, num_experts_per_tok=2,
                     moe_intermediate_size=8, num_hash_layers=0)


def _hf_config():
  return hf_cfg.DeepseekV4Config(
      hidden_size=DM, num_hidden_layers=3, layer_types=[LAYER_TYPES[r] for r in (0, 4, 128)],
      num_attention_heads=H, head_dim=HD, partial_rotary_factor=ROPE / HD, q_lora_rank=QLORA, o_groups=G,
      o_lora_rank=OLORA, sliding_window=WINDOW, index_n_heads=IH, index_head_dim=ID, index_topk=TOPK,
      rms_norm_eps=EPS, rope_theta=10000.0, compress_rope_theta=160000.0, max_position_embeddings=16 * 64,
      rope_parameters={"rope_type": "yarn", "factor": YARN.factor,
                       "original_max_position_embeddings": YARN.original_max_position_embeddings,
                       "beta_fast": YARN.beta_fast, "beta_slow": YARN.beta_slow})


def _randomize(module, rng):
  """Kernels ~ N(0, 1/fan_in) (gates ×3: peaked slot softmax), norm weights 1 + 0.3·N, biases and sinks N(0, 1)."""
  for path, node in nnx.iter_graph(module):
    if not isinstance(node, nnx.Param):
      continue
    if path[-1] in ("position_bias", "sinks"):
      value = rng.standard_normal(node.shape)
    elif path[-1] == "weight":
      value = 1 + 0.3 * rng.standard_normal(node.shape)
    else:
      value = rng.standard_normal(node.shape) / np.sqrt(node.shape[-2]) * (3.0 if "gate_proj" in path else 1.0)
    node[...] = jnp.asarray(value, jnp.float32)


@functools.cache
def _ours(kind):
  """The module (seeded per kind) and a jitted forward, built once per kind for all tests."""
  attn = Attention(_cfg(), KINDS[kind], rngs=nnx.Rngs(0), dtype=jnp.float32, param_dtype=jnp.float32)
  _randomize(attn, np.random.default_rng(KINDS[kind]))
  graphdef, state = nnx.split(attn)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return attn, lambda x: np.asarray(forward(state, jnp.asarray(x)))


def _inputs(seed):
  return np.random.default_rng(100 + seed).standard_normal((B, S, DM)).astype(np.float32)


def _t(a):
  return torch.from_numpy(np.array(a[...], np.float32))


def _copy(linear, kernel):
  linear.weight.copy_(_t(kernel).T)


def _load_compressor(ref, comp):
  _copy(ref.kv_proj, comp.kv_proj.kernel)
  _copy(ref.gate_proj, comp.gate_proj.kernel)
  ref.position_bias.copy_(_t(comp.position_bias))
  ref.kv_norm.weight.copy_(_t(comp.kv_norm.weight))


def _hf_attention(attn, kind):
  ref = hf.DeepseekV4Attention(_hf_config(), layer_idx=(0, 4, 128).index(KINDS[kind])).eval()
  with torch.no_grad():
    _copy(ref.q_a_proj, attn.q_a_proj.kernel)
    ref.q_a_norm.weight.copy_(_t(attn.q_a_norm.weight))
    _copy(ref.q_b_proj, attn.q_b_proj.kernel)
    _copy(ref.kv_proj, attn.kv_proj.kernel)
    ref.kv_norm.weight.copy_(_t(attn.kv_norm.weight))
    o_a = np.asarray(attn.o_a_proj[...])  # [G, in_g, r] → torch [G·r, in_g]
    ref.o_a_proj.weight.copy_(torch.from_numpy(o_a.transpose(0, 2, 1).reshape(-1, o_a.shape[1]).copy()))
    _copy(ref.o_b_proj, attn.o_b_proj.kernel)
    ref.sinks.copy_(_t(attn.sinks))
    if attn.compressor is not None:
      _load_compressor(ref.compressor, attn.compressor)
    if attn.indexer is not None:
      _load_compressor(ref.compressor.indexer, attn.indexer.compressor)
      _copy(ref.compressor.indexer.q_b_proj, attn.indexer.q_b_proj.kernel)
      _copy(ref.compressor.indexer.scorer.weights_proj, attn.indexer.weights_proj.kernel)
  return ref


def _sliding_causal_mask(S, window):
  """Additive [1, 1, S, S]: key k visible to query q iff 0 ≤ q − k < window (transformers' sliding overlay)."""
  d = np.arange(S)[:, None] - np.arange(S)[None, :]
  mask = torch.from_numpy(np.where((d >= 0) & (d < window), 0.0, -np.inf).astype(np.float32))
  return mask[None, None].expand(B, 1, S, S)  # per batch row: transformers concatenates [B, 1, S, C] onto it


def _hf_forward(ref, x):
  config = ref.config
  rotary = hf.DeepseekV4RotaryEmbedding(config)
  xt = torch.from_numpy(x)
  pos = torch.arange(S)[None].expand(B, -1)
  pe = {kind: rotary(xt, position_ids=pos, layer_type=kind) for kind in ("main", "compress")}
  with torch.no_grad():
    out, _ = ref(xt, position_embeddings=pe, position_ids=pos, attention_mask=_sliding_causal_mask(S, WINDOW),
                 cache=None)
  return out.numpy()


def _assert_indexer_has_margin(attn, x):
  """Precondition for CSA parity: no near-tie at the k-th place, so the reference's top-k is well defined."""
  pos = jnp.broadcast_to(jnp.arange(S), (B, S))
  _, q_res = attn.queries(jnp.asarray(x), pos)
  scores = np.asarray(attn.indexer.scores(jnp.asarray(x), q_res, pos, attn.indexer.compressor(jnp.asarray(x))))
  n_vis = (np.arange(S) + 1) // 4
  for b in range(B):
    for t in np.nonzero(n_vis > TOPK)[0]:
      top = np.sort(scores[b, t, :n_vis[t]])[::-1]
      assert top[TOPK - 1] - top[TOPK] > 1e-5 * np.abs(top).max(), (b, t)  # fp32 score error is ~1e-6 relative


@pytest.mark.parametrize("kind", list(KINDS))
def test_attention_matches_transformers(kind):
  attn, forward = _ours(kind)
  x = _inputs(KINDS[kind])
  if kind == "csa":
    _assert_indexer_has_margin(attn, x)
  ref = _hf_forward(_hf_attention(attn, kind), x)
  got = forward(x)
  assert got.shape == ref.shape == (B, S, DM)
  err, scale = np.abs(got - ref).max(), np.abs(ref).max()
  assert err <= 1e-4 * scale, (kind, err, scale)


def test_compressed_entries_matter():
  """Guard: the compressed branch changes the outputs of late tokens (else the parity tests could not see it)."""
  for kind in ("csa", "hca"):
    attn, forward = _ours(kind)
    x = _inputs(KINDS[kind])
    got = forward(x)
    graphdef, state = nnx.split(attn)  # a copy of the same layer, then without its compressed branch
    plain = nnx.merge(graphdef, state)
    plain.compressor, plain.indexer = None, None
    diff = np.abs(np.asarray(plain(jnp.asarray(x))) - got).max(-1) / np.abs(got).max()
    ratio = KINDS[kind]
    assert diff[:, :ratio - 1].max() < 1e-6, kind  # no entry is visible before the first window closes
    assert diff[:, ratio - 1:].min() > 1e-4, kind  # every token from then on sees at least one entry


CUTS = [("sliding", 150), ("hca", 130), ("hca", 255), ("csa", 201), ("csa", 203)]


@pytest.mark.parametrize("kind,t", CUTS)
def test_no_leak_from_future_tokens(kind, t):
  """Changing tokens after position t leaves outputs at positions ≤ t exactly unchanged."""
  _, forward = _ours(kind)
  x = _inputs(KINDS[kind])
  x2 = x.copy()
  x2[:, t + 1:] = np.random.default_rng(t).standard_normal(x2[:, t + 1:].shape)
  a, b = forward(x), forward(x2)
  np.testing.assert_array_equal(a[:, :t + 1], b[:, :t + 1])
  assert (np.abs(a[:, t + 1:] - b[:, t + 1:]).max(-1) > 0).all()  # the perturbation did reach every later token


@pytest.mark.parametrize("T,window", [(37, 8), (64, 16), (50, 4)])
def test_blocked_row_attention_equals_dense_attend(T, window):
  """attend_rows (blocks of `window` queries over two key blocks) against `attend`'s dense [T, T] masks, with
  packed-row segments and compressed entries."""
  from dsv4.model.attention import attend, attend_rows
  rng = np.random.default_rng(T)
  B, H, K, C = 2, 3, 8, 5
  q = jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(B, T, K)), jnp.float32)
  comp = jnp.asarray(rng.normal(size=(B, C, K)), jnp.float32)
  comp_mask = jnp.asarray(rng.random((B, T, C)) < 0.5)
  seg = jnp.asarray(np.sort(rng.integers(0, 3, (B, T)), axis=1), jnp.int32)
  sinks = jnp.asarray(rng.normal(size=(H,)), jnp.float32)
  slots = jnp.broadcast_to(jnp.arange(T), (B, T))
  for segments in (None, seg):
    want = attend(q, kv, slots, slots, jnp.ones((B, T), bool), window, sinks, 0.3, comp, comp_mask, segments,
                  segments)
    got = attend_rows(q, kv, window, sinks, 0.3, comp, comp_mask, segments)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
