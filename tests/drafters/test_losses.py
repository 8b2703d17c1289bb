"""DSpark loss terms and metrics on a hand-worked example (V = 3, γ = 2); numbers derived here by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dsv4.drafters import losses as L

# Jitted once each: eager op-by-op dispatch compiles every small op separately, which is far slower.
dspark_losses = jax.jit(L.dspark_losses, static_argnames=("alpha_ce", "alpha_tv", "alpha_conf", "decay"))
drafter_metrics = jax.jit(L.drafter_metrics, static_argnames=("n_bins",))
calibration_error = jax.jit(L.calibration_error, static_argnums=3)
tau_prob = jax.jit(L.tau_prob)

# One block, two slots. Draft and target distributions are given directly; logits are their logs.
P_DRAFT = [[0.5, 0.25, 0.25], [0.2, 0.3, 0.5]]
P_TARGET = [[0.25, 0.25, 0.5], [0.2, 0.6, 0.2]]
LABELS = [0, 1]
CONF_LOGITS = [0.0, math.log(3.0)]  # σ = 0.5, 0.75

# By hand: L1_0 = .25 + 0 + .25 = .5, L1_1 = 0 + .3 + .3 = .6 → α = (.75, .7) = the BCE targets c*.
W1 = math.exp(-1 / 4)  # slot weights (1, e^{-1/4})
CE = (-math.log(0.5) + W1 * -math.log(0.3)) / (1 + W1)
L1 = (0.5 + W1 * 0.6) / (1 + W1)
BCE0 = -(0.75 * math.log(0.5) + 0.25 * math.log(0.5))
BCE1 = -(0.7 * math.log(0.75) + 0.3 * math.log(0.25))
CONF = (BCE0 + W1 * BCE1) / (1 + W1)


def arrays(p_draft=P_DRAFT, p_target=P_TARGET, labels=LABELS, valid=(1, 1), conf=CONF_LOGITS):
  return (jnp.log(jnp.asarray([p_draft], jnp.float32)), jnp.log(jnp.asarray([p_target], jnp.float32)),
          jnp.asarray([labels], jnp.int32), jnp.asarray([valid], jnp.float32), jnp.asarray([conf], jnp.float32))


def test_loss_terms_by_hand():
  logits, target, labels, valid, conf = arrays()
  out = dspark_losses(logits, target, labels, valid, conf)
  # The hand numbers written out: CE 0.916798, L1 0.543782 (full L1, not halved), Conf 0.659924.
  assert CE == pytest.approx(0.916798, abs=1e-6) and L1 == pytest.approx(0.543782, abs=1e-6)
  assert CONF == pytest.approx(0.659924, abs=1e-6)
  np.testing.assert_allclose(float(out["ce"]), CE, rtol=1e-5)
  np.testing.assert_allclose(float(out["l1"]), L1, rtol=1e-5)
  np.testing.assert_allclose(float(out["conf"]), CONF, rtol=1e-5)
  np.testing.assert_allclose(float(out["loss"]), 0.1 * CE + 0.9 * L1 + 1.0 * CONF, rtol=1e-5)
  np.testing.assert_allclose(float(out["weight_sum"]), 1 + W1, rtol=1e-6)
  ce_only = dspark_losses(logits, target, labels, valid, None, alpha_ce=1.0, alpha_tv=0.0, alpha_conf=0.0)
  np.testing.assert_allclose(float(ce_only["loss"]), CE, rtol=1e-5)
  with pytest.raises(ValueError, match="confidence"):
    dspark_losses(logits, target, labels, valid, None)


def test_invalid_slots_count_for_nothing_and_stay_finite():
  """A dummy block (NaN target logits), a block whose slot 0 is invalid (cumulated mask kills slot 1 too) and
  a block valid only at slot 0 leave the loss equal to the hand example plus that slot-0 term."""
  logits, target, labels, valid, conf = arrays()
  nan = jnp.full((1, 2, 3), jnp.nan)
  logits = jnp.concatenate([logits, logits, logits, logits])
  target = jnp.concatenate([target, nan, target.at[:, 0].set(jnp.nan), target.at[:, 1].set(jnp.nan)])
  labels = jnp.concatenate([labels] * 4)
  valid = jnp.asarray([[1, 1], [0, 0], [0, 1], [1, 0]], jnp.float32)
  conf = jnp.concatenate([conf] * 4)

  def total(logits, conf):
    return L.dspark_losses(logits, target, labels, valid, conf)

  out = jax.jit(total)(logits, conf)
  # The fourth block adds slot 0 once more: weights (1 + 1 + W1).
  np.testing.assert_allclose(float(out["ce"]), (2 * -math.log(0.5) + W1 * -math.log(0.3)) / (2 + W1), rtol=1e-5)
  np.testing.assert_allclose(float(out["l1"]), (2 * 0.5 + W1 * 0.6) / (2 + W1), rtol=1e-5)
  np.testing.assert_allclose(float(out["conf"]), (2 * BCE0 + W1 * BCE1) / (2 + W1), rtol=1e-5)
  g_logits, g_conf = jax.jit(jax.grad(lambda a, b: total(a, b)["loss"], argnums=(0, 1)))(logits, conf)
  assert np.isfinite(np.asarray(g_logits)).all() and np.isfinite(np.asarray(g_conf)).all()
  assert not np.asarray(g_logits[1]).any() and not np.asarray(g_conf[2]).any()  # masked blocks get no gradient


def test_acceptance_and_tau_prob_by_hand():
  # ‖p_d − p_t‖₁ = 1 at both slots of one block: α = (.5, .5).
  assert float(tau_prob(jnp.ones((1, 2)), jnp.ones((1, 2)))) == pytest.approx(1 + 0.5 + 0.25)
  logits, target, labels, valid, conf = arrays()
  m = drafter_metrics(logits, target, valid, conf)
  np.testing.assert_allclose(np.asarray(m["accept"]), [0.75, 0.7], rtol=1e-5)
  np.testing.assert_allclose(float(m["tau_prob"]), 1 + 0.75 + 0.75 * 0.7, rtol=1e-5)
  # Confidence σ = (.5, .75) against c* = (.75, .7): |errors| .25, .05 in different bins.
  np.testing.assert_allclose(float(m["conf_err"]), 0.15, rtol=1e-4)
  np.testing.assert_allclose(float(m["conf_bias"]), -0.1, rtol=1e-4)
  np.testing.assert_allclose(float(m["conf_ece"]), 0.15, rtol=1e-4)
  # A second block where the draft equals the target (α = 1, 1), and a third invalid from slot 1 on.
  both = [jnp.concatenate([a, b, a]) for a, b in zip(arrays(), arrays(p_draft=P_TARGET), strict=True)]
  both[3] = jnp.asarray([[1, 1], [1, 1], [1, 0]], jnp.float32)
  m2 = drafter_metrics(both[0], both[1], both[3])
  np.testing.assert_allclose(np.asarray(m2["accept"]), [(0.75 + 1 + 0.75) / 3, (0.7 + 1) / 2], rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(m2["accept_count"]), [3, 2])
  # τ_prob multiplies α within each block, then averages over blocks (DeepSpec), not the product of slot means:
  # blocks (.75, .7), (1, 1), (.75, —) → (2.275 + 3 + 1.75) / 3; the product of means would give 2.5417.
  np.testing.assert_allclose(float(m2["tau_prob"]), (2.275 + 3.0 + 1.75) / 3, rtol=1e-5)


def naive_tau_prob(l1, valid):
  """DeepSpec's τ_prob as a loop over blocks: each block's 1 + Σ_k Π_{j≤k} α_j up to its first invalid slot,
  averaged over the blocks whose slot 0 is valid."""
  taus = []
  for l1_b, valid_b in zip(l1.reshape(-1, l1.shape[-1]), valid.reshape(-1, valid.shape[-1]), strict=True):
    if not valid_b[0]:
      continue
    tau, prod = 1.0, 1.0
    for a, v in zip(1.0 - 0.5 * l1_b, valid_b, strict=True):
      if not v:
        break
      prod *= a
      tau += prod
    taus.append(tau)
  return sum(taus) / len(taus)


@pytest.mark.parametrize("seed", range(3))
def test_tau_prob_equals_a_loop_over_blocks(seed):
  rng = np.random.default_rng(seed)
  l1 = rng.uniform(0.0, 2.0, (3, 5, 6)).astype(np.float32)
  valid = (rng.random((3, 5, 6)) < 0.85).astype(np.float32)
  valid[0, 0] = 1.0  # at least one counted block
  want = naive_tau_prob(l1, valid)
  np.testing.assert_allclose(float(tau_prob(jnp.asarray(l1), jnp.asarray(valid))), want, rtol=1e-5)
  # The trainer's pooled sums give the same, split over two "batches".
  parts = [L.tau_prob_sums(jnp.asarray(l1[i]), jnp.asarray(valid[i])) for i in ([0], [1, 2])]
  pooled = L.pooled_tau_prob(sum(float(p[0]) for p in parts), sum(float(p[1]) for p in parts))
  np.testing.assert_allclose(pooled, want, rtol=1e-5)
  # The per-slot-mean formula it replaces differs on these blocks.
  alpha, _ = L.acceptance_from_l1(jnp.asarray(l1), jnp.asarray(valid))
  assert abs(float(1 + np.sum(np.cumprod(np.asarray(alpha)))) - want) > 1e-3


def test_calibration_error_by_hand():
  pred, target = jnp.asarray([0.12, 0.15, 0.93]), jnp.asarray([0.0, 1.0, 1.0])
  # 10 bins: {0.12, 0.15} share bin 1 (gap .27 − 1 = −.73), 0.93 is alone in bin 9 (gap −.07).
  np.testing.assert_allclose(float(calibration_error(pred, target, jnp.ones(3), 10)), (0.73 + 0.07) / 3, rtol=1e-5)
  np.testing.assert_allclose(float(calibration_error(pred, target, jnp.asarray([1.0, 1.0, 0.0]), 10)), 0.73 / 2,
                             rtol=1e-5)
