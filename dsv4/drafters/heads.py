"""DSpark's sequential head (a logit bias from the previous block token) and its confidence head.

x_{k−1} is the token before slot k: the anchor for slot 0, then the previous slot's token — the data token
(teacher forcing) in training, the drafted token at inference. W1 is an embedding [V, r], W2 a map r → V.

  markov:  bias_k = W2(W1[x_{k−1}])
  rnn:     z = [s_{k−1}; W1 x_{k−1}; h_k];  g, c, o = split(Wz + b);  s_k = σ(g)⊙s_{k−1} + (1−σ(g))⊙tanh(c)
           bias_k = W2(tanh(o)), with s = 0 entering slot 0
  confidence: c_k = σ(w·[h_k; W1 x_{k−1}] + b) (just w·h_k + b without a sequential head), the estimated
           acceptance of slot k given slots < k were accepted.

All take any leading shape (written X); `step` is one slot with an explicit state (zero-width for markov), and
`block_bias` runs all G slots of teacher-forced blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.model.layers import Linear, param


class SequentialHead(nnx.Module):

  def __init__(self, kind: str, vocab_size: int, rank: int, d_model: int, *, rngs, dtype, param_dtype):
    assert kind in ("markov", "rnn"), kind
    self.kind, self.rank, self.dtype = kind, rank, dtype
    self.w1 = param(rngs, (vocab_size, rank), ("vocab", None), param_dtype)
    self.w2 = Linear(rank, vocab_size, (None, "vocab"), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    if kind == "rnn":
      self.cell = Linear(2 * rank + d_model, 3 * rank, (None, None), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
      self.cell_bias = param(rngs, (3 * rank,), (None,), jnp.float32, init="zeros")

  def prev_embed(self, prev_ids_X):
    """W1[x_{k−1}], [..., r]."""
    return self.w1[...][prev_ids_X].astype(self.dtype)

  def init_state(self, batch_shape):
    width = self.rank if self.kind == "rnn" else 0
    return jnp.zeros(tuple(batch_shape) + (width,), jnp.float32)

  def step(self, state_XR, prev_ids_X, h_XD):
    """(bias [..., V] float32, next state) for one slot."""
    e = self.prev_embed(prev_ids_X)
    if self.kind == "markov":
      return self.w2(e).astype(jnp.float32), state_XR
    z = jnp.concatenate([state_XR.astype(self.dtype), e, h_XD.astype(self.dtype)], axis=-1)
    gate, cand, out = jnp.split(self.cell(z).astype(jnp.float32) + self.cell_bias[...], 3, axis=-1)
    g = jax.nn.sigmoid(gate)
    state_XR = g * state_XR + (1 - g) * jnp.tanh(cand)
    return self.w2(jnp.tanh(out)).astype(jnp.float32), state_XR

  def block_bias(self, prev_ids_XG, h_XGD):
    """Biases [..., G, V] of whole blocks, unrolled over the slots with the given (teacher-forced) tokens."""
    if self.kind == "markov":
      return self.w2(self.prev_embed(prev_ids_XG)).astype(jnp.float32)
    state, biases = self.init_state(prev_ids_XG.shape[:-1]), []
    for k in range(prev_ids_XG.shape[-1]):
      bias, state = self.step(state, prev_ids_XG[..., k], h_XGD[..., k, :])
      biases.append(bias)
    return jnp.stack(biases, axis=-2)


class ConfidenceHead(nnx.Module):

  def __init__(self, d_in: int, *, rngs, dtype, param_dtype):
    self.proj = Linear(d_in, 1, ("embed", None), rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.bias = param(rngs, (1,), (None,), jnp.float32, init="zeros")

  def __call__(self, h_XD, prev_embed_XR=None):
    """Confidence logits [...] (float32); σ of them is the confidence."""
    x = h_XD if prev_embed_XR is None else jnp.concatenate([h_XD, prev_embed_XR.astype(h_XD.dtype)], axis=-1)
    return (self.proj(x).astype(jnp.float32) + self.bias[...])[..., 0]
