"""mHC: HyperConnection (pre/post/comb, collapse, expand) and HyperHead against transformers' DeepSeek-V4 modules
and the decoder layer's mixing formula."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.model.hyper import HyperConnection, HyperHead

torch = pytest.importorskip("torch")
hf_cfg = pytest.importorskip("transformers.models.deepseek_v4.configuration_deepseek_v4")
hf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

D, B, T = 24, 2, 5
ITERS, HC_EPS, NORM_EPS = 20, 1e-6, 1e-6


def _hf_config(n):
  return hf_cfg.DeepseekV4Config(hidden_size=D, hc_mult=n, hc_sinkhorn_iters=ITERS, hc_eps=HC_EPS,
                                 rms_norm_eps=NORM_EPS, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                                 layer_types=["sliding_attention"])


def _randomize(module, rng):
  """fn ~ N(0, 4/(N·D)) (logits of order 1), base ~ N(0, 1), scale ~ U(0.5, 2): nothing at its default."""
  module.fn[...] = jnp.asarray(rng.standard_normal(module.fn.shape) * 2 / np.sqrt(module.fn.shape[0]), jnp.float32)
  module.base[...] = jnp.asarray(rng.standard_normal(module.base.shape), jnp.float32)
  module.scale[...] = jnp.asarray(rng.uniform(0.5, 2.0, module.scale.shape), jnp.float32)


def _t(a):
  return torch.from_numpy(np.array(a, np.float32))


def _streams(rng, n):
  # Streams of different scales, so a wrong normalisation or a transposed mix shows.
  return (rng.standard_normal((B, T, n, D)) * rng.uniform(0.5, 3.0, (1, 1, n, 1))).astype(np.float32)


def _np_rms(x):
  x = x.astype(np.float64)
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + NORM_EPS)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("n", [2, 4])
def test_hyper_connection_matches_transformers(n):
  rng = np.random.default_rng(n)
  hc = HyperConnection(D, n, ITERS, HC_EPS, NORM_EPS, rngs=nnx.Rngs(0))
  _randomize(hc, rng)
  ref = hf.DeepseekV4HyperConnection(_hf_config(n))
  with torch.no_grad():
    ref.fn.copy_(_t(np.asarray(hc.fn[...]).T))
    ref.base.copy_(_t(hc.base[...]))
    ref.scale.copy_(_t(hc.scale[...]))
  streams = _streams(rng, n)
  out = rng.standard_normal((B, T, D)).astype(np.float32)
  with torch.no_grad():
    ref_post, ref_comb, ref_collapsed = (a.numpy() for a in ref(_t(streams)))
    ref_mixed = (torch.from_numpy(ref_post).unsqueeze(-1) * _t(out).unsqueeze(-2)
                 + torch.matmul(torch.from_numpy(ref_comb).transpose(-1, -2), _t(streams))).numpy()

  pre, post, comb = hc.weights(jnp.asarray(streams))
  assert pre.shape == post.shape == (B, T, n) and comb.shape == (B, T, n, n)
  np.testing.assert_allclose(np.asarray(post), ref_post, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(comb), ref_comb, rtol=1e-5, atol=1e-6)
  collapsed = hc.collapse(jnp.asarray(streams), pre)
  np.testing.assert_allclose(np.asarray(collapsed), ref_collapsed, rtol=1e-5, atol=1e-5)
  mixed = HyperConnection.expand(jnp.asarray(streams), jnp.asarray(out), post, comb)
  np.testing.assert_allclose(np.asarray(mixed), ref_mixed, rtol=1e-5, atol=1e-5)

  # pre itself, from the published formula (transformers consumes it internally).
  mix = _np_rms(streams.reshape(B, T, n * D)) @ np.asarray(hc.fn[...], np.float64)
  base, scale = np.asarray(hc.base[...], np.float64), np.asarray(hc.scale[...], np.float64)
  np.testing.assert_allclose(np.asarray(pre), _sigmoid(mix[..., :n] * scale[0] + base[:n]) + HC_EPS, rtol=1e-5)
  # For n > 2 comb is not symmetric (2×2 doubly stochastic matrices are), so the test tells combᵀ from comb.
  if n > 2:
    assert np.abs(ref_comb - np.swapaxes(ref_comb, -1, -2)).max() > 1e-2


@pytest.mark.parametrize("n", [2, 4])
def test_comb_is_doubly_stochastic(n):
  """Logits of order 1 (std ≈ 0.8): 20 Sinkhorn iterations make rows and columns sum to 1."""
  rng = np.random.default_rng(10 + n)
  hc = HyperConnection(D, n, ITERS, HC_EPS, NORM_EPS, rngs=nnx.Rngs(0))
  hc.fn[...] = jnp.asarray(rng.standard_normal(hc.fn.shape) * 0.7 / np.sqrt(n * D), jnp.float32)
  hc.base[...] = jnp.asarray(rng.standard_normal(hc.base.shape) * 0.3, jnp.float32)
  _, _, comb = hc.weights(jnp.asarray(_streams(rng, n)))
  comb = np.asarray(comb)
  assert (comb > 0).all()
  np.testing.assert_allclose(comb.sum(-2), 1.0, atol=1e-5)  # the last Sinkhorn step normalises columns
  np.testing.assert_allclose(comb.sum(-1), 1.0, atol=1e-3)


def test_sinkhorn_rows_converge_with_more_iterations():
  """Peaked logits (comb scale 3): 20 iterations leave the rows visibly off 1 (as in transformers and the reference
  code — Sinkhorn is truncated, not exact); columns stay exact and the row error shrinks with more iterations."""
  n = 4
  rng = np.random.default_rng(30)
  streams = jnp.asarray(_streams(rng, n))
  row_error = {}
  for iters in (5, 20, 80):
    hc = HyperConnection(D, n, iters, HC_EPS, NORM_EPS, rngs=nnx.Rngs(0))
    _randomize(hc, np.random.default_rng(31))
    hc.scale[...] = jnp.asarray([1.0, 1.0, 3.0], jnp.float32)
    _, _, comb = hc.weights(streams)
    comb = np.asarray(comb)
    np.testing.assert_allclose(comb.sum(-2), 1.0, atol=1e-5)
    row_error[iters] = np.abs(comb.sum(-1) - 1).max()
  assert row_error[20] > 1e-3, row_error  # the regime where truncation shows
  assert row_error[80] < row_error[20] < row_error[5], row_error


@pytest.mark.parametrize("n", [2, 4])
def test_hyper_head_matches_transformers(n):
  rng = np.random.default_rng(20 + n)
  head = HyperHead(D, n, HC_EPS, NORM_EPS, rngs=nnx.Rngs(0))
  _randomize(head, rng)
  ref = hf.DeepseekV4HyperHead(_hf_config(n))
  with torch.no_grad():
    ref.hc_fn.copy_(_t(np.asarray(head.fn[...]).T))
    ref.hc_base.copy_(_t(head.base[...]))
    ref.hc_scale.copy_(_t(head.scale[...]))
  streams = _streams(rng, n)
  with torch.no_grad():
    expected = ref(_t(streams)).numpy()
  np.testing.assert_allclose(np.asarray(head(jnp.asarray(streams))), expected, rtol=1e-5, atol=1e-5)
  # Not a plain sum/mean of the streams: the learned weights matter.
  assert np.abs(expected - streams.sum(2)).max() > 1e-2 and np.abs(expected - streams.mean(2)).max() > 1e-2
