"""Speculative-decoding metrics against a naive per-round loop written here, hand-worked cases, and a simulated
loop whose true per-draft acceptance is known."""

import math

import numpy as np
import pytest

from dsv4.benchmarking import Refused, Timings
from dsv4.inference import metrics as M


def naive(rounds, k_max):
  """The DESIGN.md definitions as a loop over (accepted, proposed, bonus) rounds, one counter at a time."""
  committed = accepted = proposed = 0
  surv_num, surv_den = [0] * (k_max + 1), [0] * (k_max + 1)
  cond_num, cond_den = [0] * (k_max + 1), [0] * (k_max + 1)
  for a, p, b in rounds:
    committed += a + b
    accepted += a
    proposed += p
    for k in range(1, k_max + 1):
      if p >= k:
        surv_den[k] += 1
        if a >= k:
          surv_num[k] += 1
        if a >= k - 1:
          cond_den[k] += 1
          if a >= k:
            cond_num[k] += 1
  return {"tau": committed / len(rounds), "rate": accepted / proposed,
          "survival": [surv_num[k] / surv_den[k] for k in range(1, k_max + 1)],
          "conditional": [cond_num[k] / cond_den[k] if cond_den[k] else math.nan for k in range(1, k_max + 1)]}


def stats(rounds):
  a, p, b = (np.array(c) for c in zip(*rounds, strict=True))
  return M.AcceptanceStats.from_rounds(a, p, b)


# (accepted, proposed, bonus): a partial accept, a first-draft rejection, a full accept, and a round that accepted
# an EOS at draft 1 (no bonus) after max_new_tokens cut its block to 2 drafts.
HAND = [(2, 3, 1), (0, 3, 1), (3, 3, 1), (1, 2, 0)]


def test_hand_worked_rounds():
  s = stats(HAND)
  assert s.tau == pytest.approx((3 + 1 + 4 + 1) / 4)  # 2.25: the EOS round counts its accepted draft, no bonus
  assert s.acceptance_rate == pytest.approx(6 / 11)
  assert [s.survival(k) for k in (1, 2, 3)] == pytest.approx([3 / 4, 2 / 4, 1 / 3])
  assert [s.conditional(k) for k in (1, 2, 3)] == pytest.approx([3 / 4, 2 / 3, 1 / 2])
  d = s.to_dict()
  assert d["rounds"] == 4 and d["accepted"] == 6 and d["proposed"] == 11 and d["bonus"] == 3
  assert d["accepted_per_position"] == [3, 2, 1]
  assert d["tau"] == pytest.approx(2.25) and isinstance(d["tau"], float)


@pytest.mark.parametrize("seed", range(5))
def test_random_rounds_equal_the_naive_loop(seed):
  rng = np.random.default_rng(seed)
  gamma, R = int(rng.integers(1, 9)), int(rng.integers(1, 200))
  prop = rng.integers(1, gamma + 1, R)
  acc = np.array([rng.integers(0, p + 1) for p in prop])
  bonus = rng.integers(0, 2, R)
  rounds = list(zip(acc.tolist(), prop.tolist(), bonus.tolist(), strict=True))
  want, s = naive(rounds, gamma), M.AcceptanceStats.from_rounds(acc, prop, bonus)
  assert s.tau == pytest.approx(want["tau"]) and s.acceptance_rate == pytest.approx(want["rate"])
  for k in range(1, s.max_proposed + 1):
    assert s.survival(k) == pytest.approx(want["survival"][k - 1])
    np.testing.assert_allclose(s.conditional(k), want["conditional"][k - 1])


def test_prompts_pool_their_rounds():
  """τ pools all rounds of all prompts: not the mean of per-prompt τ."""
  p1, p2 = [(3, 3, 1)], [(0, 3, 1)] * 3
  pooled = M.AcceptanceStats.from_rounds(*([np.array([r[i] for r in p]) for p in (p1, p2)] for i in range(3)))
  assert pooled.tau == pytest.approx((4 + 3 * 1) / 4)
  assert pooled.tau != pytest.approx((stats(p1).tau + stats(p2).tau) / 2)


def test_a_simulated_loop_recovers_its_per_draft_acceptance():
  """Each draft survives with probability 0.7 independently, γ = 4; an accepted EOS (prob. 0.05 per accepted
  draft) ends the round without a bonus. Conditional acceptance@k and τ match their closed forms."""
  rng, alpha, eos, gamma, R = np.random.default_rng(0), 0.7, 0.05, 4, 40_000
  acc, bonus = np.zeros(R, int), np.ones(R, int)
  for r in range(R):
    for _ in range(gamma):
      if rng.random() >= alpha:
        break
      acc[r] += 1
      if rng.random() < eos:
        bonus[r] = 0
        break
  s = M.AcceptanceStats.from_rounds(acc, np.full(R, gamma), bonus)
  # Draft 1 survives with α; draft k > 1 needs the round not to have stopped on an EOS at draft k − 1 too.
  assert s.conditional(1) == pytest.approx(alpha, abs=0.01)
  for k in range(2, gamma + 1):
    assert s.conditional(k) == pytest.approx(alpha * (1 - eos), abs=0.02)
  # P(reach and accept draft k) = (α(1−eos))^(k−1)·α; E[accepted] = Σ_k that; E[bonus] = 1 − P(some EOS accepted).
  q = alpha * (1 - eos)
  e_acc = sum(q ** (k - 1) * alpha for k in range(1, gamma + 1))
  e_bonus = 1 - sum(q ** (k - 1) * alpha * eos for k in range(1, gamma + 1))
  assert s.tau == pytest.approx(e_acc + e_bonus, abs=0.02)
  assert s.survival(1) == pytest.approx(alpha, abs=0.01)


def test_macro_average_is_unweighted():
  assert M.macro_average({"gsm8k": 2.0, "mbpp": 3.0, "mt": 4.0}) == pytest.approx(3.0)
  with pytest.raises(ValueError, match="no prompt sets"):
    M.macro_average({})


def test_speedup_and_loop_efficiency():
  ar = np.array([2.0, 2.1, 1.9, 2.05, 2.0])
  spec = np.array([1.0, 1.02, 0.98, 1.01, 1.0])
  t = Timings({"ar": ar, "speculative": spec}, [], (0.0,) * 3, (0.0,) * 3, 2, 1)
  sp = M.speedup(t)
  assert sp.value == pytest.approx(2.0 / 1.0) and sp.lo > 1.8
  # Predicted by hand: τ 3 · T_AR 10 ms / (5 + 15 ms) = 1.5, so a measured 2.0 is 4/3 of the prediction.
  assert M.predicted_speedup(3.0, 0.010, 0.005, 0.015) == pytest.approx(1.5)
  assert M.loop_efficiency(2.0, 3.0, 0.010, 0.005, 0.015) == pytest.approx(4 / 3)
  eff = M.loop_efficiency(sp, 3.0, 0.010, 0.005, 0.015)
  assert eff.value == pytest.approx(sp.value / 1.5) and eff.lo == pytest.approx(sp.lo / 1.5)
  noisy = Timings({"ar": ar, "speculative": ar[::-1] * 0.99}, [], (0.0,) * 3, (0.0,) * 3, 2, 1)
  with pytest.raises(Refused, match="inside the noise"):
    M.speedup(noisy)
  assert M.tokens_per_second(64, 0.5) == pytest.approx(128.0)


def test_measure_speedup_times_both_interleaved():
  """A fake clock that each call advances by its variant's cost: AR 3 s, speculative 1 s, then 1.5 s."""
  now, order = [0.0], []

  def costs(name, seconds):
    def run():
      order.append(name)
      now[0] += seconds
    return run

  sp, t = M.measure_speedup(costs("ar", 3.0), costs("spec", 1.0), repeats=5, clock=lambda: now[0],
                            on_high_load="ignore")
  assert order == ["ar", "spec"] * 6 and sp.value == pytest.approx(3.0) and (sp.lo, sp.hi) == (3.0, 3.0)
  with pytest.raises(Refused, match="inside the noise"):  # equal costs: no effect to claim
    M.measure_speedup(costs("ar", 1.0), costs("spec", 1.0), clock=lambda: now[0], on_high_load="ignore")


def test_time_split():
  split = M.time_split(0.030, 0.005, 0.020)
  assert split["other"] == pytest.approx(0.005) and split["draft_frac"] == pytest.approx(1 / 6)
  with pytest.raises(Refused, match="impossible"):
    M.time_split(0.020, 0.005, 0.020)


def test_bad_rounds_fail_with_the_field_named():
  with pytest.raises(ValueError, match="round 1: needs 0 ≤ round_accepted ≤ round_proposed"):
    M.AcceptanceStats.from_rounds([1, 4], [3, 3], [1, 1])
  with pytest.raises(ValueError, match="round_bonus"):
    M.AcceptanceStats.from_rounds([1], [3], [2])
  with pytest.raises(ValueError, match="one entry per round"):
    M.AcceptanceStats.from_rounds([1, 2], [3], [1])
  with pytest.raises(ValueError, match="no rounds"):
    M.AcceptanceStats.from_rounds([], [], [])
  with pytest.raises(ValueError, match="no round proposed 4"):
    stats(HAND).survival(4)
