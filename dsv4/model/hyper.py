"""Manifold-constrained hyper-connections (mHC): the residual is `hc_mult` parallel streams [B, T, N, D].

Around each sublayer, one linear map of the RMS-normalised flattened streams gives (2 + N)·N logits:
  pre  = σ(·) + eps           [N]    collapses the streams into the sublayer input,
  post = 2σ(·)                [N]    places the sublayer output back onto the streams,
  comb = Sinkhorn(softmax(·)) [N, N] doubly stochastic, mixes the residual streams:
  streams' = post ⊗ f(Σ_n pre_n·stream_n) + combᵀ · streams.
All of it runs in fp32. A final HyperHead collapses the streams (σ weights) before the last norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.layers import param, rms_normalize


class HyperConnection(nnx.Module):

  def __init__(self, d_model: int, n: int, sinkhorn_iters: int, hc_eps: float, norm_eps: float, *, rngs):
    self.n, self.iters, self.hc_eps, self.norm_eps = n, sinkhorn_iters, hc_eps, norm_eps
    self.fn = param(rngs, (n * d_model, (2 + n) * n), ("embed", None), jnp.float32)
    self.base = param(rngs, ((2 + n) * n,), (None,), jnp.float32, init="zeros")
    self.scale = param(rngs, (3,), (None,), jnp.float32, init="ones")

  def weights(self, streams_BTND):
    """(pre [B,T,N], post [B,T,N], comb [B,T,N,N]) in fp32."""
    B, T, N, D = streams_BTND.shape
    flat = rms_normalize(streams_BTND.reshape(B, T, N * D), self.norm_eps)
    mix = jnp.dot(flat, self.fn[...])
    base, scale = self.base[...], self.scale[...]
    pre = jax.nn.sigmoid(mix[..., :N] * scale[0] + base[:N]) + self.hc_eps
    post = 2 * jax.nn.sigmoid(mix[..., N:2 * N] * scale[1] + base[N:2 * N])
    comb_logits = mix[..., 2 * N:].reshape(B, T, N, N) * scale[2] + base[2 * N:].reshape(N, N)
    comb = jax.nn.softmax(comb_logits, axis=-1) + self.hc_eps
    comb = comb / (jnp.sum(comb, axis=-2, keepdims=True) + self.hc_eps)
    def sinkhorn_step(_, c):  # rows, then columns; a loop (not unrolled) keeps compile time small
      c = c / (jnp.sum(c, axis=-1, keepdims=True) + self.hc_eps)
      return c / (jnp.sum(c, axis=-2, keepdims=True) + self.hc_eps)

    comb = jax.lax.fori_loop(0, self.iters - 1, sinkhorn_step, comb)
    return pre, post, comb

  def collapse(self, streams_BTND, pre_BTN):
    return jnp.einsum("btn,btnd->btd", pre_BTN, streams_BTND.astype(jnp.float32)).astype(streams_BTND.dtype)

  @staticmethod
  def expand(streams_BTND, out_BTD, post_BTN, comb_BTNN):
    """post ⊗ out + combᵀ · streams  (comb[j, k] carries stream j into stream k)."""
    dt = streams_BTND.dtype
    mixed = jnp.einsum("btjk,btjd->btkd", comb_BTNN.astype(dt), streams_BTND)
    return post_BTN.astype(dt)[..., None] * out_BTD[:, :, None, :] + mixed


class HyperHead(nnx.Module):
  """Final collapse of the streams: Σ_n (σ(mix_n · scale + base_n) + eps) · stream_n."""

  def __init__(self, d_model: int, n: int, hc_eps: float, norm_eps: float, *, rngs):
    self.n, self.hc_eps, self.norm_eps = n, hc_eps, norm_eps
    self.fn = param(rngs, (n * d_model, n), ("embed", None), jnp.float32)
    self.base = param(rngs, (n,), (None,), jnp.float32, init="zeros")
    self.scale = param(rngs, (1,), (None,), jnp.float32, init="ones")

  def __call__(self, streams_BTND):
    B, T, N, D = streams_BTND.shape
    flat = rms_normalize(streams_BTND.reshape(B, T, N * D), self.norm_eps)
    pre = jax.nn.sigmoid(jnp.dot(flat, self.fn[...]) * self.scale[...][0] + self.base[...]) + self.hc_eps
    return jnp.einsum("btn,btnd->btd", pre, streams_BTND.astype(jnp.float32)).astype(streams_BTND.dtype)


def stream_mean(streams_BTND):
  """The streams averaged in fp32: what taps (hidden states after a layer) expose to drafters."""
  return jnp.mean(streams_BTND.astype(jnp.float32), axis=2).astype(streams_BTND.dtype)
