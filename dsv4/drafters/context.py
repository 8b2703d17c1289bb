"""What a drafter reads from its target: the frozen embedding and LM head, and the cacheable context K/V.

`FrozenTarget` holds the target's embedding and LM head as plain arrays behind `stop_gradient`; the drafter
never owns or trains them (DeepSpec keeps frozen copies in the drafter and its checkpoints; we pass the
target's own arrays instead, so a drafter checkpoint holds only what it trains). Its `embed`/`head` compute
exactly what `Transformer.embed_tokens`/`Transformer.head` do.

`ContextKV` holds, per drafter layer, the keys and values projected from the context features. Context tokens
never pass through a drafter layer's norms, MLP or attention, only through its Wk/Wv, so these are exact and
computed once per context token: a fixed-size buffer [L, B, S, J, K] (L drafter layers, J KV heads) filled by
`write`. Shape letters: dsv4.glossary.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FrozenTarget:
  embed_VD: jax.Array
  lm_head_DV: jax.Array | None  # None: the head is tied to the embedding (dense targets that share it)
  dtype: Any = dataclasses.field(default=jnp.float32, metadata=dict(static=True))

  @classmethod
  def of(cls, target) -> FrozenTarget:
    """From any target (dsv4.model.target): its current arrays; nothing is copied."""
    head = target.lm_head
    return cls(target.embed[...], None if head is None else head[...], target.dtype)

  def embed(self, ids):
    return jax.lax.stop_gradient(self.embed_VD)[ids].astype(self.dtype)

  def head(self, hidden_XD):
    """float32 logits, as the target's head computes them."""
    x = hidden_XD.astype(self.dtype)
    if self.lm_head_DV is None:
      w_VD = jax.lax.stop_gradient(self.embed_VD).astype(self.dtype)
      return jnp.einsum("...d,vd->...v", x, w_VD).astype(jnp.float32)
    w = jax.lax.stop_gradient(self.lm_head_DV).astype(self.dtype)
    return jnp.dot(x, w).astype(jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ContextKV:
  """Per-layer context keys (normalised and rotated at their positions) and values, [L, B, S, J, K]."""

  k_LBSJK: jax.Array
  v_LBSJK: jax.Array

  @property
  def k_NBSJK(self) -> jax.Array:  # the old name (N is mHC streams in dsv4.glossary); remove once unused
    return self.k_LBSJK

  @property
  def v_NBSJK(self) -> jax.Array:
    return self.v_LBSJK

  @property
  def length(self) -> int:
    return self.k_LBSJK.shape[2]

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, kv_heads: int, head_dim: int, dtype=jnp.float32):
    shape = (num_layers, batch, max_len, kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def write(self, new: ContextKV, start_B) -> ContextKV:
    """Writes `new` ([L, B, T, J, K]) at rows start_B..start_B+T−1 of each sequence; the caller keeps
    start + T ≤ S (dynamic_update_slice would shift an overflowing write back inside the buffer)."""

    def put(buf_LBSJK, upd_LBTJK):
      row = lambda b, u, s: jax.lax.dynamic_update_slice(b, u.astype(b.dtype), (s, 0, 0))
      return jax.vmap(jax.vmap(row, in_axes=(0, 0, 0)), in_axes=(0, 0, None))(buf_LBSJK, upd_LBTJK, start_B)

    return ContextKV(put(self.k_LBSJK, new.k_LBSJK), put(self.v_LBSJK, new.v_LBSJK))
