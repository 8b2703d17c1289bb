"""DSpark training loss and its acceptance/calibration metrics, in float32 over [..., G] block slots.

Inputs per slot k of a block anchored at p: the drafter's (sequential-head corrected, teacher-forced) logits,
the target's logits at position p+k (its distribution of token p+k+1 given the data prefix), the data token
x* = ids[p+k+1] (the target's own sampled response), and `valid` (block kept ∧ label inside the sequence ∧
label is a loss token). Supervision is a contiguous prefix: the mask is cumulated over k.

  w_k  = Π_{j≤k} valid_j · exp(−k/decay)                            (DeepSpec: decay 4.0, k = 0..G−1)
  CE   = −log p_d(x*)
  L1   = ‖p_d − p_t‖₁            the full L1 (= 2·TV), not halved, as DeepSpec's loss
  Conf = BCE(c_logit, c*),  c* = clip(1 − ½‖p_d − p_t‖₁, 0, 1), detached
  Soft = −Σ_v p_t(v) log p_d(v)   soft-label CE against the target (EAGLE-3's loss; 0 weight for DSpark)
  loss = α_ce·CE + α_tv·L1 + α_conf·Conf + α_soft·Soft,  each a weighted mean Σ w·x / Σ w

Metrics (DESIGN.md definitions; positions weighted by the cumulated mask only, no decay):
  α_{b,k} = 1 − ½‖p_d − p_t‖₁ of block b at slot k   (the chance that sampling at T = 1 accepts the slot's draft)
  accept_k = α_{b,k} averaged over the blocks whose slots ≤ k are all valid (logged per slot)
  τ_prob = mean over blocks of 1 + Σ_k Π_{j≤k} α_{b,j}   (DeepSpec's definition: the product is taken within
           each block, then averaged; not the product of the per-slot means, which differs by up to 1 %)
  confidence: expected calibration error of σ(c_logit) against c* over equal-width bins, mean |error|, bias.

τ_prob is a T = 1 quantity: it is the expected accepted length (plus the bonus) of rejection sampling at
temperature 1 when the drafts are sampled from p_d. Greedy (T = 0) τ differs: it accepts a draft only if it is
the target's argmax (on `small`, greedy τ 1.51 against T = 1 τ 1.64 for the same drafter).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dsv4.drafters.config import DrafterConfig

f32 = jnp.float32


def loss_weights(cfg: DrafterConfig) -> dict:
  """The config's loss weights and decay, as keyword arguments of `dspark_losses`."""
  return dict(alpha_ce=cfg.alpha_ce, alpha_tv=cfg.alpha_tv, alpha_conf=cfg.alpha_conf,
              alpha_soft_ce=cfg.alpha_soft_ce, decay=cfg.decay)


def supervised_mask(valid_XG):
  """The cumulated validity Π_{j≤k} valid_j (float32): slot k counts only if slots < k do."""
  return jnp.cumprod(valid_XG.astype(f32), axis=-1)


def position_weights(valid_XG, decay: float):
  """w_k = Π_{j≤k} valid_j · exp(−k/decay), [..., G] float32."""
  G = valid_XG.shape[-1]
  return supervised_mask(valid_XG) * jnp.exp(-jnp.arange(G, dtype=f32) / decay)


def _weighted_mean(x, w):
  return jnp.sum(jnp.where(w > 0, x, 0.0) * w) / jnp.maximum(jnp.sum(w), 1e-12)


def draft_target_probs(logits_XGV, target_logits_XGV, valid_XG):
  """(log p_d, p_t), [..., G, V] float32; invalid slots' target logits are zeroed first so garbage there
  (padding) cannot put NaNs into the gradients."""
  target = jnp.where(valid_XG[..., None] > 0, target_logits_XGV.astype(f32), 0.0)
  return jax.nn.log_softmax(logits_XGV.astype(f32), axis=-1), jax.nn.softmax(target, axis=-1)


def draft_target_l1(logits_XGV, target_logits_XGV, valid_XG):
  """(log p_d [..., G, V], ‖p_d − p_t‖₁ [..., G]) in float32."""
  logp_d, p_t = draft_target_probs(logits_XGV, target_logits_XGV, valid_XG)
  return logp_d, jnp.sum(jnp.abs(jnp.exp(logp_d) - p_t), axis=-1)


def bce_with_logits(logits, targets):
  """Binary cross-entropy of σ(logits) against soft targets in [0, 1], stable for any logit."""
  return jnp.maximum(logits, 0.0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))


def slot_terms(logits_XGV, target_logits_XGV, labels_XG, valid_XG) -> dict:
  """Per-slot {'ce', 'l1', 'soft_ce'}, each [..., G] float32 (the module docstring's CE, L1 and Soft): computed
  once for the loss and the acceptance/calibration metrics alike."""
  logp_d, p_t = draft_target_probs(logits_XGV, target_logits_XGV, valid_XG)
  return {"ce": -jnp.take_along_axis(logp_d, labels_XG[..., None].astype(jnp.int32), axis=-1)[..., 0],
          "l1": jnp.sum(jnp.abs(jnp.exp(logp_d) - p_t), axis=-1),
          "soft_ce": -jnp.sum(p_t * logp_d, axis=-1)}


def losses_from_terms(terms: dict, valid_XG, conf_logits_XG=None, *, alpha_ce=0.1, alpha_tv=0.9, alpha_conf=1.0,
                      alpha_soft_ce=0.0, decay=4.0) -> dict:
  """{'loss', 'ce', 'l1', 'conf', 'soft_ce', 'weight_sum'} (scalars, float32) from `slot_terms`."""
  if alpha_conf > 0 and conf_logits_XG is None:
    raise ValueError("dspark_losses: alpha_conf > 0 needs confidence logits (the drafter has no confidence head?).")
  w = position_weights(valid_XG, decay)
  out = {k: _weighted_mean(terms[k], w) for k in ("ce", "l1", "soft_ce")}
  out.update(conf=jnp.zeros((), f32), weight_sum=jnp.sum(w))
  if conf_logits_XG is not None:
    target = jax.lax.stop_gradient(jnp.clip(1.0 - 0.5 * terms["l1"], 0.0, 1.0))
    out["conf"] = _weighted_mean(bce_with_logits(conf_logits_XG.astype(f32), target), w)
  out["loss"] = (alpha_ce * out["ce"] + alpha_tv * out["l1"] + alpha_conf * out["conf"]
                 + alpha_soft_ce * out["soft_ce"])
  return out


def dspark_losses(logits_XGV, target_logits_XGV, labels_XG, valid_XG, conf_logits_XG=None, *, alpha_ce=0.1,
                  alpha_tv=0.9, alpha_conf=1.0, alpha_soft_ce=0.0, decay=4.0) -> dict:
  """{'loss', 'ce', 'l1', 'conf', 'soft_ce', 'weight_sum'} (scalars, float32); see the module docstring."""
  return losses_from_terms(slot_terms(logits_XGV, target_logits_XGV, labels_XG, valid_XG), valid_XG, conf_logits_XG,
                           alpha_ce=alpha_ce, alpha_tv=alpha_tv, alpha_conf=alpha_conf, alpha_soft_ce=alpha_soft_ce,
                           decay=decay)


# --- metrics ------------------------------------------------------------------------------------------
def expected_acceptance(logits_XGV, target_logits_XGV, valid_XG):
  """(α [G], count [G]): α_k = mean of 1 − ½‖p_d − p_t‖₁ over blocks whose slots ≤ k are all valid (the
  per-slot acceptance logged as accept_k; τ_prob multiplies α within each block instead, `block_tau_prob`).
  A slot no block supervises gets α_k = 0."""
  _, l1 = draft_target_l1(logits_XGV, target_logits_XGV, valid_XG)
  return acceptance_from_l1(l1, valid_XG)


def acceptance_from_l1(l1_XG, valid_XG):
  """`expected_acceptance` from the per-slot ‖p_d − p_t‖₁ (`slot_terms(...)['l1']`)."""
  m = supervised_mask(valid_XG)
  G = valid_XG.shape[-1]
  count_G = m.reshape(-1, G).sum(0)
  accept_G = jnp.where(m > 0, 1.0 - 0.5 * l1_XG, 0.0).reshape(-1, G).sum(0)
  return jnp.where(count_G > 0, accept_G / jnp.maximum(count_G, 1.0), 0.0), count_G


def block_tau_prob(l1_XG, valid_XG):
  """(τ_X, counted_X): each block's 1 + Σ_k Π_{j≤k} α_j with α_j = 1 − ½‖p_d − p_t‖₁ at slot j, the product
  ending at the block's first invalid slot; counted_X = 1 for blocks whose slot 0 is valid (the blocks τ_prob
  averages over), else 0. float32. The one implementation of τ_prob: `tau_prob`, `drafter_metrics` and the
  trainer's pooled sums (`tau_prob_sums`, `pooled_tau_prob`) all go through it."""
  m = supervised_mask(valid_XG)
  alpha_XG = jnp.where(m > 0, 1.0 - 0.5 * l1_XG.astype(f32), 0.0)
  tau_X = 1.0 + jnp.sum(jnp.cumprod(alpha_XG, axis=-1), axis=-1)
  return tau_X, m[..., 0]


def tau_prob_sums(l1_XG, valid_XG):
  """(Σ τ_b over counted blocks, #counted blocks): sums that pool exactly over batches (`pooled_tau_prob`)."""
  tau_X, counted_X = block_tau_prob(l1_XG, valid_XG)
  return jnp.sum(tau_X * counted_X), jnp.sum(counted_X)


def pooled_tau_prob(tau_sum, blocks) -> float:
  """τ_prob from `tau_prob_sums` summed over batches: the mean over blocks; 1.0 (no draft accepted) without any."""
  return float(tau_sum) / float(blocks) if float(blocks) > 0 else 1.0


def tau_prob(l1_XG, valid_XG):
  """τ_prob = the mean over blocks of each block's 1 + Σ_k Π_{j≤k} α_j (see `block_tau_prob`): the expected
  accepted length, bonus included, of rejection sampling at T = 1 (not greedy τ). 1.0 without any valid block."""
  total, blocks = tau_prob_sums(l1_XG, valid_XG)
  return jnp.where(blocks > 0, total / jnp.maximum(blocks, 1.0), 1.0)


def calibration_gaps(pred_N, target_N, weight_N, n_bins: int = 20):
  """Σ w·(pred − target) within each of `n_bins` equal-width bins of the predicted probability, [n_bins]."""
  pred, target, w = (jnp.ravel(x).astype(f32) for x in (pred_N, target_N, weight_N))
  bins = jnp.clip(jnp.floor(pred * n_bins), 0, n_bins - 1).astype(jnp.int32)
  return jax.ops.segment_sum(w * (pred - target), bins, num_segments=n_bins)


def calibration_error(pred_N, target_N, weight_N, n_bins: int = 20):
  """Expected calibration error over `n_bins` equal-width bins of the predicted probability:
  Σ_bins |Σ w·(pred − target)| / Σ w (= Σ_bins (n_b/N)·|mean pred_b − mean target_b|). Targets may be soft."""
  gaps = calibration_gaps(pred_N, target_N, weight_N, n_bins)
  return jnp.sum(jnp.abs(gaps)) / jnp.maximum(jnp.sum(jnp.ravel(weight_N).astype(f32)), 1e-12)


def drafter_metrics(logits_XGV, target_logits_XGV, valid_XG, conf_logits_XG=None, n_bins: int = 20) -> dict:
  """{'accept' [G], 'accept_count' [G], 'tau_prob'} and, with confidence logits, {'conf_ece', 'conf_err',
  'conf_bias'}."""
  _, l1 = draft_target_l1(logits_XGV, target_logits_XGV, valid_XG)
  alpha_G, count_G = acceptance_from_l1(l1, valid_XG)
  out = {"accept": alpha_G, "accept_count": count_G, "tau_prob": tau_prob(l1, valid_XG)}
  if conf_logits_XG is not None:
    target = jnp.clip(1.0 - 0.5 * l1, 0.0, 1.0)
    pred = jax.nn.sigmoid(conf_logits_XG.astype(f32))
    m = supervised_mask(valid_XG)
    out["conf_ece"] = calibration_error(pred, target, m, n_bins)
    out["conf_err"] = _weighted_mean(jnp.abs(pred - target), m)
    out["conf_bias"] = _weighted_mean(pred - target, m)
  return out
