"""The lightning indexer (scores, top-k selection with its tie-break rule) and the KV compressor (HCA windows,
CSA overlapping windows) against naive numpy loops and transformers' DeepSeek-V4 modules."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.model.compressor import Compressor
from dsv4.model.config import ModelConfig, YarnConfig
from dsv4.model.indexer import Indexer
from dsv4.model.rope import layer_inv_frequencies

torch = pytest.importorskip("torch")
hf_cfg = pytest.importorskip("transformers.models.deepseek_v4.configuration_deepseek_v4")
hf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

DM, HD, ROPE, QLORA = 32, 16, 8, 24  # model width, attention head dim, rope dims, q_lora_rank
IH, ID = 16, 16                       # indexer heads (≥ 16 avoids exact score ties), indexer head dim
EPS = 1e-6
YARN = YarnConfig(16.0, 64, 32.0, 1.0)  # a short original length so YaRN changes frequencies at these positions


def _cfg(topk=5, ratio=4):
  return ModelConfig(vocab_size=64, hidden_size=DM, num_hidden_layers=1, compress_ratios=(ratio,),
                     num_attention_heads=2, head_dim=HD, q_lora_rank=QLORA, qk_rope_head_dim=ROPE, o_groups=1,
                     o_lora_rank=8, index_n_heads=IH, index_head_dim=ID, index_topk=topk, yarn=YARN,
                     rms_norm_eps=EPS, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                     num_hash_layers=0)


def _indexer(topk=5, seed=0):
  cfg = _cfg(topk)
  ix = Indexer(cfg, 4, layer_inv_frequencies(cfg, compressed=True), rngs=nnx.Rngs(seed), dtype=jnp.float32,
               param_dtype=jnp.float32)
  _randomize(ix, np.random.default_rng(seed))
  return ix, cfg


def _randomize(module, rng):
  """Kernels ~ N(0, 1/fan_in); gate kernels hotter (peaked slot softmax); position bias, norm weights random."""
  for path, node in nnx.iter_graph(module):
    if not isinstance(node, nnx.Param):
      continue
    if path[-1] == "position_bias":
      value = rng.standard_normal(node.shape)
    elif path[-1] == "weight":  # RMSNorm
      value = 1 + 0.3 * rng.standard_normal(node.shape)
    else:
      value = rng.standard_normal(node.shape) / np.sqrt(node.shape[0]) * (3.0 if "gate_proj" in path else 1.0)
    node[...] = jnp.asarray(value, jnp.float32)


# --- numpy references -----------------------------------------------------------------------------------

def _np_rope(x, pos, inv_freq):
  """Interleaved RoPE as complex multiplication on the last 2·len(inv_freq) channels; x [..., D], pos [...]."""
  inv_freq = np.asarray(inv_freq, np.float32)
  r = 2 * len(inv_freq)
  angles = (np.asarray(pos, np.float32)[..., None] * inv_freq).astype(np.float64)
  z = (x[..., -r::2] + 1j * x[..., -r + 1::2]) * np.exp(1j * angles)
  out = np.array(x, np.float64)
  out[..., -r::2], out[..., -r + 1::2] = z.real, z.imag
  return out


def _np_compress(x_BSD, comp, overlap):
  """Builds every compressed entry from its window(s), one entry and one channel-softmax at a time."""
  f64 = lambda a: np.asarray(a[...], np.float64)
  wkv, wg, pb, norm_w = f64(comp.kv_proj.kernel), f64(comp.gate_proj.kernel), f64(comp.position_bias), f64(
      comp.kv_norm.weight)
  d, m = comp.head_dim, comp.ratio
  B, S, _ = x_BSD.shape
  out = np.zeros((B, S // m, d))
  for b in range(B):
    kv, gate = x_BSD[b].astype(np.float64) @ wkv, x_BSD[b].astype(np.float64) @ wg
    for w in range(S // m):
      slots_kv, slots_gate = [], []
      if overlap and w > 0:  # the previous window's Ca half
        for j in range(m):
          tok = (w - 1) * m + j
          slots_kv.append(kv[tok, :d])
          slots_gate.append(gate[tok, :d] + pb[j, :d])
      for j in range(m):  # this window (its Cb half when overlapping)
        tok = w * m + j
        sl = slice(d, 2 * d) if overlap else slice(0, d)
        slots_kv.append(kv[tok, sl])
        slots_gate.append(gate[tok, sl] + pb[j, sl])
      g = np.stack(slots_gate)
      p = np.exp(g - g.max(0))
      p = p / p.sum(0)
      pooled = (p * np.stack(slots_kv)).sum(0)
      normed = pooled / np.sqrt(np.mean(pooled**2) + EPS) * norm_w
      out[b, w] = _np_rope(normed, w * m, comp.inv_freq)
  return out


def _np_select(scores_BTC, pos_BT, ratio, k, prefer_low_index=True):
  """The documented rule: entry c is visible at position t iff (c+1)·ratio ≤ t+1; keep the k best visible
  entries, and among equal scores the lower entry index."""
  B, T, C = scores_BTC.shape
  chosen = np.zeros((B, T, C), bool)
  for b in range(B):
    for t in range(T):
      visible = [c for c in range(C) if (c + 1) * ratio <= pos_BT[b, t] + 1]
      order = sorted(visible, key=lambda c: (-scores_BTC[b, t, c], c if prefer_low_index else -c))
      chosen[b, t, order[:k]] = True
  return chosen


# --- selection ------------------------------------------------------------------------------------------

def _tied_scores(rng, B, T, C):
  """Scores from {0, 1, 2} (many ties), exact zeros as a ReLU gives, and one huge score per row somewhere."""
  s = rng.integers(0, 3, (B, T, C)).astype(np.float32)
  s[rng.random((B, T, C)) < 0.2] = 0.0
  s[np.arange(B)[:, None], np.arange(T)[None, :], rng.integers(0, C, (B, T))] = 100.0
  return s


@pytest.mark.parametrize("topk", [1, 3, 5])
def test_select_matches_numpy_rule_with_ties(topk):
  ix, _ = _indexer(topk)
  rng = np.random.default_rng(topk)
  B, T, C = 2, 48, 11
  scores = _tied_scores(rng, B, T, C)
  pos = np.stack([np.arange(T), np.sort(rng.integers(0, 4 * C + 4, T))])  # prefill and an arbitrary schedule
  got = np.asarray(ix.select(jnp.asarray(scores), jnp.asarray(pos)))
  np.testing.assert_array_equal(got, _np_select(scores, pos, 4, topk))
  # The cases that matter occurred: a tie straddles the top-k boundary, and a future entry had the best score.
  n_visible = (pos + 1) // 4
  assert ((n_visible > topk) & (got.sum(-1) == topk)).any()
  future_best = np.take_along_axis(scores, scores.argmax(-1)[..., None], -1)[..., 0] == 100.0
  future_best &= scores.argmax(-1) >= n_visible
  assert future_best.any()
  ties_at_boundary = _np_select(scores, pos, 4, topk) != _np_select(scores, pos, 4, topk, prefer_low_index=False)
  assert ties_at_boundary.any()  # the tie-break rule decides some entries: the test can tell the rules apart


def test_select_never_picks_invisible_entries_and_keeps_all_when_topk_covers():
  ix, _ = _indexer(topk=20)  # more than C entries: every visible entry is kept
  rng = np.random.default_rng(7)
  B, T, C = 2, 40, 9
  scores = rng.standard_normal((B, T, C)).astype(np.float32)
  pos = np.broadcast_to(np.arange(T), (B, T))
  got = np.asarray(ix.select(jnp.asarray(scores), jnp.asarray(pos)))
  visible = np.arange(C)[None, None, :] < ((pos + 1) // 4)[..., None]
  np.testing.assert_array_equal(got, visible)
  np.testing.assert_array_equal(got, _np_select(scores, pos, 4, 20))
  assert not got[:, :3].any()  # nothing is visible before the first window closes at position 3


# --- scores ---------------------------------------------------------------------------------------------

def test_scores_match_transformers_scorer_and_numpy():
  ix, cfg = _indexer(seed=1)
  rng = np.random.default_rng(1)
  B, T, C = 2, 12, 7
  x = rng.standard_normal((B, T, DM)).astype(np.float32)
  q_res = rng.standard_normal((B, T, QLORA)).astype(np.float32)
  pos = np.stack([np.arange(T), np.arange(T) + 100])
  keys = rng.standard_normal((B, C, ID)).astype(np.float32)
  ours = np.asarray(ix.scores(jnp.asarray(x), jnp.asarray(q_res), jnp.asarray(pos), jnp.asarray(keys)))

  # transformers: its query path (q_b_proj, RoPE on [B, H, S, D]) and DeepseekV4IndexerScorer.
  scorer = hf.DeepseekV4IndexerScorer(_hf_config(topk=5))
  q_b = torch.nn.Linear(QLORA, IH * ID, bias=False)
  with torch.no_grad():
    scorer.weights_proj.weight.copy_(torch.from_numpy(np.asarray(ix.weights_proj.kernel[...]).T.copy()))
    q_b.weight.copy_(torch.from_numpy(np.asarray(ix.q_b_proj.kernel[...]).T.copy()))
    freqs = torch.from_numpy(pos.astype(np.float32))[..., None] * torch.from_numpy(np.asarray(ix.inv_freq, np.float32))
    q = q_b(torch.from_numpy(q_res)).view(B, T, IH, ID).transpose(1, 2)
    q = hf.apply_rotary_pos_emb(q, freqs.cos(), freqs.sin()).transpose(1, 2)
    ref = scorer(q, torch.from_numpy(keys), torch.from_numpy(x)).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)

  # numpy: Σ_h w_{t,h}·ReLU(q_{t,h}·k_c)/√I with w = weights_proj(x)/√H.
  qn = (q_res.astype(np.float64) @ np.asarray(ix.q_b_proj.kernel[...], np.float64)).reshape(B, T, IH, ID)
  qn = _np_rope(qn, pos[:, :, None], ix.inv_freq)
  w = x.astype(np.float64) @ np.asarray(ix.weights_proj.kernel[...], np.float64) / np.sqrt(IH)
  expected = np.zeros((B, T, C))
  for b in range(B):
    for t in range(T):
      for c in range(C):
        expected[b, t, c] = sum(w[b, t, h] * max(qn[b, t, h] @ keys[b, c], 0.0) for h in range(IH)) / np.sqrt(ID)
  np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


# --- compressor -----------------------------------------------------------------------------------------

def _compressor(ratio, overlap, seed):
  cfg = _cfg(ratio=ratio)
  comp = Compressor(DM, HD, ratio, overlap, EPS, layer_inv_frequencies(cfg, compressed=True), rngs=nnx.Rngs(seed),
                    dtype=jnp.float32, param_dtype=jnp.float32)
  _randomize(comp, np.random.default_rng(seed))
  return comp


@pytest.mark.parametrize("ratio,overlap,S", [(4, True, 41), (128, False, 300)])
def test_compressor_matches_naive_window_loop(ratio, overlap, S):
  comp = _compressor(ratio, overlap, seed=ratio)
  x = np.random.default_rng(ratio).standard_normal((2, S, DM)).astype(np.float32)
  got = np.asarray(comp(jnp.asarray(x)))
  assert got.shape == (2, S // ratio, HD)
  np.testing.assert_allclose(got, _np_compress(x, comp, overlap), rtol=1e-5, atol=1e-5)
  # The trailing partial window is dropped: more tokens after the last closed window change nothing.
  extra = (S // ratio + 1) * ratio - 1 - S
  assert extra > 0
  longer = np.concatenate([x, np.ones((2, extra, DM), np.float32)], axis=1)
  np.testing.assert_array_equal(np.asarray(comp(jnp.asarray(longer))), got)


@pytest.mark.parametrize("ratio,overlap", [(4, True), (128, False)])
def test_compressor_of_a_sequence_shorter_than_a_window_is_empty(ratio, overlap):
  """No closed window → no entries, [B, 0, d] (transformers returns an empty tensor too)."""
  comp = _compressor(ratio, overlap, seed=3)
  assert comp(jnp.ones((2, ratio - 1, DM))).shape == (2, 0, HD)


def test_csa_overlap_is_not_a_plain_window():
  """Guard: with overlap the previous window's Ca slots really contribute (a non-overlap reading would differ)."""
  comp = _compressor(4, True, seed=5)
  x = np.random.default_rng(5).standard_normal((1, 24, DM)).astype(np.float32)
  got = np.asarray(comp(jnp.asarray(x)))
  x_prev_changed = x.copy()
  x_prev_changed[:, 4:8] += 1.0  # window 1 feeds entries 1 (as Cb) and 2 (as Ca)
  changed = np.abs(np.asarray(comp(jnp.asarray(x_prev_changed))) - got).max(-1)[0]
  assert changed[0] == 0 and changed[1] > 1e-3 and changed[2] > 1e-3 and (changed[3:] == 0).all(), changed


def _hf_config(topk):
  return hf_cfg.DeepseekV4Config(
      hidden_size=DM, head_dim=HD, partial_rotary_factor=ROPE / HD, q_lora_rank=QLORA, num_attention_heads=2,
      num_hidden_layers=1, layer_types=["compressed_sparse_attention"], index_n_heads=IH, index_head_dim=ID,
      index_topk=topk, rms_norm_eps=EPS, compress_rope_theta=160000.0, max_position_embeddings=16 * 64,
      compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
      rope_parameters={"rope_type": "yarn", "factor": YARN.factor,
                       "original_max_position_embeddings": YARN.original_max_position_embeddings,
                       "beta_fast": YARN.beta_fast, "beta_slow": YARN.beta_slow})


def _t(a):
  return torch.from_numpy(np.array(a[...], np.float32))


def _load_compressor(ref, comp):
  with torch.no_grad():
    ref.kv_proj.weight.copy_(_t(comp.kv_proj.kernel).T)
    ref.gate_proj.weight.copy_(_t(comp.gate_proj.kernel).T)
    ref.position_bias.copy_(_t(comp.position_bias))
    ref.kv_norm.weight.copy_(_t(comp.kv_norm.weight))


def _load_indexer(ref, ix):
  _load_compressor(ref, ix.compressor)
  with torch.no_grad():
    ref.q_b_proj.weight.copy_(_t(ix.q_b_proj.kernel).T)
    ref.scorer.weights_proj.weight.copy_(_t(ix.weights_proj.kernel).T)


def test_hca_compressor_matches_transformers():
  comp = _compressor(128, False, seed=11)
  ref = hf.DeepseekV4HCACompressor(_hf_config(topk=5))
  _load_compressor(ref, comp)
  rng = np.random.default_rng(11)
  S = 300
  x = rng.standard_normal((2, S, DM)).astype(np.float32)
  pos = torch.arange(S)[None].expand(2, -1)
  with torch.no_grad():
    ref_kv, block_bias = ref(torch.from_numpy(x), torch.zeros(2, S, QLORA), pos, None, 0)
  np.testing.assert_allclose(np.asarray(comp(jnp.asarray(x))), ref_kv[:, 0].numpy(), rtol=1e-5, atol=1e-5)
  # Its visibility mask is ours: entry c visible at t iff (c+1)·128 ≤ t+1.
  visible = np.arange(2)[None, :] < ((np.arange(S) + 1) // 128)[:, None]
  np.testing.assert_array_equal(np.isfinite(block_bias[0, 0].numpy()), visible)


def test_csa_compressor_and_indexer_match_transformers():
  """HF's CSA compressor also runs the indexer: compare its compressed kv and the indexer's picks."""
  topk, S = 5, 64
  ix, cfg = _indexer(topk, seed=12)
  comp = _compressor(4, True, seed=13)
  ref = hf.DeepseekV4CSACompressor(_hf_config(topk))
  _load_compressor(ref, comp)
  _load_indexer(ref.indexer, ix)
  rng = np.random.default_rng(12)
  x = rng.standard_normal((2, S, DM)).astype(np.float32)
  q_res = rng.standard_normal((2, S, QLORA)).astype(np.float32)
  pos = np.broadcast_to(np.arange(S), (2, S))
  with torch.no_grad():
    ref_kv, block_bias = ref(torch.from_numpy(x), torch.from_numpy(q_res), torch.from_numpy(pos.copy()), None, 0)
  np.testing.assert_allclose(np.asarray(comp(jnp.asarray(x))), ref_kv[:, 0].numpy(), rtol=1e-5, atol=1e-5)

  keys = ix.compressor(jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(keys), _np_compress(x, ix.compressor, True), rtol=1e-5, atol=1e-5)
  scores = np.asarray(ix.scores(jnp.asarray(x), jnp.asarray(q_res), jnp.asarray(pos), keys))
  # Precondition: the reference's top-k is well defined (no near-tie at the k-th place among visible entries).
  n_vis = (pos + 1) // 4
  for b in range(2):
    for t in range(S):
      vis = np.sort(scores[b, t, :n_vis[b, t]])[::-1]
      if len(vis) > topk:
        assert vis[topk - 1] - vis[topk] > 1e-4, (b, t, vis[topk - 1:topk + 1])
  chosen = np.asarray(ix.select(jnp.asarray(scores), jnp.asarray(pos)))
  np.testing.assert_array_equal(chosen, np.isfinite(block_bias[:, 0].numpy()))
  assert (chosen.sum(-1) == np.minimum(n_vis, topk)).all() and (n_vis > topk).any()
