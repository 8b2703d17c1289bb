"""What drafter training reads from the frozen target, and the blocks it supervises.

Shapes: B packed rows of T tokens (several documents per row, `dsv4.data.packing`), A blocks per row, G slots
per block, L taps, N mHC streams, D width.

`TargetFeatures` is the frozen target's view of a batch, computed online (a target forward inside the jitted
step) or read from the offline cache; every drafter kind consumes it through the same interface:

  drafter.train_logits(feats, blocks, frozen) -> (logits [B, A, G, V] float32, confidence logits [B, A, G] | None)

where slot k of block (b, a) predicts the token at row index anchor+k+1, from a context that holds the
document's tokens before the anchor only (what inference has: the anchor is the token just committed, whose
target hidden state does not exist yet). `drafter.feature_names` says which optional features it reads.

`Blocks` is built from anchor row indices sampled on the host (`dsv4.data.anchors`); a block is kept when its
anchor and the next token are both loss tokens of the same document (DeepSpec's candidate rule).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TargetFeatures:
  tokens_BT: jax.Array                 # int32
  positions_BT: jax.Array              # int32 position inside its document
  segment_ids_BT: jax.Array            # int32 document id inside the row, 0 = padding
  hidden_BTD: jax.Array                # the target's final-normed hidden (target logits = head(hidden))
  taps_BTLD: jax.Array | None = None   # hidden after each tapped layer (mean over the mHC streams)
  streams_BTND: jax.Array | None = None  # residual streams before the final collapse (MTP drafters)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Blocks:
  anchor_BA: jax.Array       # int32 row index of the anchor (the last committed token)
  anchor_pos_BA: jax.Array   # int32 its position inside its document (the block's RoPE start)
  ctx_start_BA: jax.Array    # int32 row index where the anchor's document starts: context is [start, anchor)
  prev_BAG: jax.Array        # int32 token before slot k (teacher forced): [anchor, x_0, .., x_{G−2}]
  labels_BAG: jax.Array      # int32 token slot k predicts: tokens[anchor + k + 1]
  valid_BAG: jax.Array       # float32 1 where the label is a loss token of the anchor's document and the block kept


def _take(x_BT, idx_BX):
  return jnp.take_along_axis(x_BT, idx_BX, axis=1)


def make_blocks(tokens_BT, segment_ids_BT, positions_BT, target_mask_BT, anchor_BA, keep_BA, block_size: int) -> Blocks:
  """Blocks at the given anchors (dummy blocks have keep = 0 and are never supervised)."""
  B, T = tokens_BT.shape
  G = block_size
  anchor_BA = anchor_BA.astype(jnp.int32)
  idx_BAG = anchor_BA[..., None] + 1 + jnp.arange(G, dtype=jnp.int32)   # label rows
  inside_BAG = idx_BAG < T
  flat = jnp.minimum(idx_BAG, T - 1).reshape(B, -1)
  labels_BAG = _take(tokens_BT, flat).reshape(idx_BAG.shape)
  seg_BA = _take(segment_ids_BT, anchor_BA)
  same_BAG = _take(segment_ids_BT, flat).reshape(idx_BAG.shape) == seg_BA[..., None]
  loss_BAG = _take(target_mask_BT, flat).reshape(idx_BAG.shape) == 1
  valid_BAG = keep_BA[..., None].astype(bool) & (seg_BA[..., None] != 0) & inside_BAG & same_BAG & loss_BAG
  anchor_pos_BA = _take(positions_BT, anchor_BA)
  anchor_ids_BA = _take(tokens_BT, anchor_BA)
  prev_BAG = jnp.concatenate([anchor_ids_BA[..., None], labels_BAG[..., :-1]], axis=-1)
  return Blocks(anchor_BA, anchor_pos_BA, anchor_BA - anchor_pos_BA, prev_BAG.astype(jnp.int32),
                labels_BAG.astype(jnp.int32), valid_BAG.astype(jnp.float32))


def gather_slots(x_BTX, anchor_BA, block_size: int, offset: int = 0):
  """x at row indices anchor + offset + k for k < G, [B, A, G, ...] (indices past the row are clamped; their
  slots are invalid)."""
  B, T = x_BTX.shape[:2]
  idx_BAG = anchor_BA[..., None] + offset + jnp.arange(block_size, dtype=jnp.int32)
  flat = jnp.clip(idx_BAG, 0, T - 1).reshape(B, -1)
  out = jnp.take_along_axis(x_BTX, flat.reshape(flat.shape + (1,) * (x_BTX.ndim - 2)), axis=1)
  return out.reshape(idx_BAG.shape + x_BTX.shape[2:])
