"""Auxiliary-loss-free load balancing (DeepSeek-V3/V4): after every step each routed MoE layer nudges its
routing bias towards balance, `bias_e += rate · sign(mean load − load_e)`. The bias only affects which
experts are picked, never the gate weights, so it needs no gradient. Hash-routed layers have no bias.
"""

from __future__ import annotations

import jax.numpy as jnp


def expert_load(experts_BTK, weights_BT, n_experts: int):
  """Tokens routed to each expert, counting only positions with weight > 0: [E] float32."""
  onehot_BTKE = experts_BTK[..., None] == jnp.arange(n_experts)
  return jnp.einsum("btke,bt->e", onehot_BTKE.astype(jnp.float32), (weights_BT > 0).astype(jnp.float32))


def load_entropy(load_E):
  """Entropy of the load distribution normalised by log E: 1 is perfectly balanced."""
  p = load_E / jnp.maximum(jnp.sum(load_E), 1.0)
  return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)) / jnp.log(load_E.shape[0])


def update_bias(bias_E, load_E, rate: float):
  return bias_E + rate * jnp.sign(jnp.mean(load_E) - load_E)
