"""Language-model losses on packed rows: weighted next-token cross-entropy and the MTP loss.

Weights come from `dsv4.data.packing.row_loss_weights`: position t predicting token t + offset counts iff
both lie in the same document chunk and the target is a training target (padding and, for chat data,
prompt tokens count for nothing). Losses are means over counted positions of the whole global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv4.data.packing import row_loss_weights


def weighted_cross_entropy(logits_BTV, targets_BT, weights_BT):
  """(Σ w·CE, Σ w) in float32, so callers can pool sums across batches before dividing."""
  logp_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
  nll_BT = -jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
  return jnp.sum(nll_BT * weights_BT), jnp.sum(weights_BT)


def shift_left(x_BT, k: int):
  """x[:, t + k] at t (the last k positions get 0; their weight is 0)."""
  return jnp.concatenate([x_BT[:, k:], jnp.zeros_like(x_BT[:, :k])], axis=1)


def lm_losses(out, tokens_BT, segment_ids_BT, target_mask_BT) -> dict:
  """Next-token CE (`ce`) and, if `out` has MTP logits, the mean over MTP modules of their CE (`mtp`).

  MTP module k at position t predicts token t + 2 + k. Also returns the counted-position totals.
  """
  w_BT = row_loss_weights(segment_ids_BT, target_mask_BT, 1)
  ce_sum, n = weighted_cross_entropy(out.logits_BTV, shift_left(tokens_BT, 1), w_BT)
  losses = {"ce": ce_sum / jnp.maximum(n, 1.0), "tokens": n}
  if out.mtp_logits_KBTV is not None:
    per_module = []
    for k, logits_BTV in enumerate(out.mtp_logits_KBTV):
      w_k = row_loss_weights(segment_ids_BT, target_mask_BT, 2 + k)
      s, m = weighted_cross_entropy(logits_BTV, shift_left(tokens_BT, 2 + k), w_k)
      per_module.append(s / jnp.maximum(m, 1.0))
    losses["mtp"] = jnp.mean(jnp.stack(per_module))
  return losses
