"""RoPE / YaRN tables and the interleaved rotation against transformers' DeepSeek-V4 implementation."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
hf_cfg = pytest.importorskip("transformers.models.deepseek_v4.configuration_deepseek_v4")
hf = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")

from dsv4.model.config import ModelConfig, YarnConfig  # noqa: E402
from dsv4.model.rope import apply_rope, inv_frequencies, layer_inv_frequencies  # noqa: E402

# (head_dim, rope_dim, original_max_position_embeddings): a small config and the V4-Flash sizes.
SIZES = [(32, 16, 256), (512, 64, 65536)]


def _hf_rotary(head_dim, rope_dim, original):
  config = hf_cfg.DeepseekV4Config(
      hidden_size=64, num_hidden_layers=1, num_attention_heads=4, head_dim=head_dim,
      partial_rotary_factor=rope_dim / head_dim, rope_theta=10000.0, compress_rope_theta=160000.0,
      max_position_embeddings=16 * original,
      rope_parameters={"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": original,
                       "beta_fast": 32, "beta_slow": 1})
  assert config.qk_rope_head_dim == rope_dim
  return hf.DeepseekV4RotaryEmbedding(config)


@pytest.mark.parametrize("head_dim,rope_dim,original", SIZES)
def test_inv_frequencies_match_transformers(head_dim, rope_dim, original):
  rotary = _hf_rotary(head_dim, rope_dim, original)
  assert rotary.compress_attention_scaling == 1.0  # V4 does not rescale cos/sin
  plain = inv_frequencies(rope_dim, 10000.0)
  yarn = inv_frequencies(rope_dim, 160000.0, YarnConfig(16.0, original, 32.0, 1.0))
  assert plain.shape == yarn.shape == (rope_dim // 2,)
  np.testing.assert_allclose(plain, rotary.main_inv_freq.numpy(), rtol=1e-6, atol=0)
  np.testing.assert_allclose(yarn, rotary.compress_inv_freq.numpy(), rtol=1e-6, atol=0)
  # YaRN actually changed the low-frequency end (the test would not notice a no-op YaRN otherwise).
  assert not np.allclose(yarn, inv_frequencies(rope_dim, 160000.0), rtol=1e-3)
  assert yarn[0] == pytest.approx(1.0) and yarn[-1] < inv_frequencies(rope_dim, 160000.0)[-1] / 8


def test_layer_inv_frequencies_pick_the_right_table():
  cfg = ModelConfig(head_dim=32, qk_rope_head_dim=16, yarn=YarnConfig(16.0, 256, 32.0, 1.0))
  rotary = _hf_rotary(32, 16, 256)
  np.testing.assert_allclose(layer_inv_frequencies(cfg, compressed=False), rotary.main_inv_freq.numpy(), rtol=1e-6)
  np.testing.assert_allclose(layer_inv_frequencies(cfg, compressed=True), rotary.compress_inv_freq.numpy(),
                             rtol=1e-6)


def _hf_cos_sin(inv_freq, positions_BT):
  freqs = torch.from_numpy(np.asarray(positions_BT, np.float32))[..., None] * torch.from_numpy(inv_freq)
  return freqs.cos(), freqs.sin()


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("head_dim,rope_dim,original", SIZES)
def test_apply_rope_with_heads_axis_matches_transformers(inverse, head_dim, rope_dim, original):
  rng = np.random.default_rng(0)
  B, T, H = 2, 7, 3
  x_BTHD = rng.standard_normal((B, T, H, head_dim)).astype(np.float32)
  pos_BT = rng.integers(0, 100_000, (B, T))
  inv_freq = inv_frequencies(rope_dim, 160000.0, YarnConfig(16.0, original, 32.0, 1.0))
  ours = np.asarray(apply_rope(jnp.asarray(x_BTHD), jnp.asarray(pos_BT), inv_freq, inverse=inverse))
  cos, sin = _hf_cos_sin(inv_freq, pos_BT)
  ref = hf.apply_rotary_pos_emb(torch.from_numpy(x_BTHD).transpose(1, 2), cos, -sin if inverse else sin)
  ref = ref.transpose(1, 2).numpy()
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(ours[..., :-rope_dim], x_BTHD[..., :-rope_dim])  # nope channels untouched
  assert not np.allclose(ours[..., -rope_dim:], x_BTHD[..., -rope_dim:], atol=1e-3)


@pytest.mark.parametrize("inverse", [False, True])
def test_apply_rope_without_heads_axis_matches_transformers(inverse):
  rng = np.random.default_rng(1)
  B, T, D, R = 2, 9, 32, 16
  x_BTD = rng.standard_normal((B, T, D)).astype(np.float32)
  pos_BT = rng.integers(0, 5000, (B, T))
  inv_freq = inv_frequencies(R, 10000.0)
  ours = np.asarray(apply_rope(jnp.asarray(x_BTD), jnp.asarray(pos_BT), inv_freq, inverse=inverse))
  cos, sin = _hf_cos_sin(inv_freq, pos_BT)
  ref = hf.apply_rotary_pos_emb(torch.from_numpy(x_BTD).unsqueeze(1), cos, -sin if inverse else sin).squeeze(1)
  np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-5, atol=1e-5)


def test_apply_rope_is_a_complex_rotation_of_interleaved_pairs():
  """Independent reference: (x_even + i·x_odd) · e^{i·pos·θ} (the official DeepSeek formulation)."""
  rng = np.random.default_rng(2)
  T, H, D, R = 11, 2, 24, 8
  x = rng.standard_normal((T, H, D)).astype(np.float32)
  pos = rng.integers(0, 1000, (T,))
  inv_freq = inv_frequencies(R, 10000.0)
  z = x[..., -R:][..., 0::2] + 1j * x[..., -R:][..., 1::2]
  angles = (pos.astype(np.float32)[:, None, None] * inv_freq).astype(np.float64)  # fp32 angles, as both sides
  z = z * np.exp(1j * angles)
  ref = x.copy()
  ref[..., -R::2], ref[..., -R + 1::2] = z.real, z.imag
  ours = np.asarray(apply_rope(jnp.asarray(x), jnp.asarray(pos), inv_freq))
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_inverse_undoes_forward():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((2, 5, 4, 64)).astype(np.float32))
  pos = jnp.asarray(rng.integers(0, 1_000_000, (2, 5)))
  inv_freq = inv_frequencies(32, 160000.0, YarnConfig())
  forward = apply_rope(x, pos, inv_freq)
  np.testing.assert_allclose(np.asarray(apply_rope(forward, pos, inv_freq, inverse=True)), np.asarray(x),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(apply_rope(apply_rope(x, pos, inv_freq, inverse=True), pos, inv_freq)),
                             np.asarray(x), rtol=1e-5, atol=1e-5)
  assert not np.allclose(np.asarray(forward), np.asarray(x), atol=1e-3)
