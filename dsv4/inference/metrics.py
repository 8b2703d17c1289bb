"""Speculative-decoding metrics, exactly as DESIGN.md defines them, from the per-round record of the loop.

Input: numpy arrays over rounds (all rounds of all prompts of one dataset, concatenated in any order):
  round_accepted  [R] int  drafts accepted in the round (0 … proposed)
  round_proposed  [R] int  drafts proposed in the round (γ, or fewer where max_new_tokens cut the block)
  round_bonus     [R] 0/1  whether the round also committed the target's own token (the bonus: the correction
                           after a rejection, or the extra token after a full accept). A round that ends on an
                           accepted EOS, or whose drafts already reach max_new_tokens, commits none.

Definitions:
  τ (accepted length)        = Σ_rounds (accepted + bonus) / rounds, pooled over all rounds of all prompts of a
                               dataset (not a mean of per-prompt τ). With γ drafts per round, τ ≤ γ + 1.
  survival@k                 = #rounds with accepted ≥ k / #rounds with proposed ≥ k.
  conditional acceptance@k   = #rounds with accepted ≥ k / #rounds with accepted ≥ k − 1, both among the rounds
                               that proposed ≥ k (the chance draft k survives given drafts < k did).
  acceptance rate            = Σ accepted / Σ proposed.
  macro-average              = the unweighted mean of per-dataset values.
  tokens/s                   = tokens generated / wall-clock seconds.
  speedup                    = AR wall-clock / speculative wall-clock on identical prompts, lengths and seeds,
                               median of ≥ 5 interleaved repetitions with the spread of the per-pair ratios
                               (`dsv4.benchmarking`); refused inside the noise or for an impossible time.
  loop efficiency            = measured speedup / (τ · T_AR-step / (T_draft + T_verify)): the speedup the
                               component times predict, if the loop added nothing over its parts, is τ tokens per
                               (draft + verify) against one per AR step.
  time split                 = drafting / verifying / other per round, from separately timed runs of the jitted
                               parts: other = T_round − T_draft − T_verify.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from dsv4.benchmarking import MIN_REPEATS, Estimate, Refused, Timings, time_interleaved


def _rounds_array(x, name: str) -> np.ndarray:
  a = np.asarray(x)
  if a.ndim != 1:
    raise ValueError(f"{name}: wants a 1-D array over rounds, got shape {a.shape}.")
  if a.size and not np.issubdtype(a.dtype, np.integer) and not np.all(np.equal(np.mod(a, 1), 0)):
    raise ValueError(f"{name}: wants whole numbers (counts per round), got {a[:8]!r}.")
  return a.astype(np.int64)


@dataclass(frozen=True)
class AcceptanceStats:
  """Per-round acceptance record of one dataset; see the module docstring for every definition."""
  accepted: np.ndarray
  proposed: np.ndarray
  bonus: np.ndarray

  @classmethod
  def from_rounds(cls, accepted, proposed, bonus) -> AcceptanceStats:
    """From `round_accepted`, `round_proposed`, `round_bonus` (1-D, one entry per round; lists of per-prompt
    arrays are concatenated: τ pools all rounds of all prompts)."""
    arrays = []
    for x, name in ((accepted, "round_accepted"), (proposed, "round_proposed"), (bonus, "round_bonus")):
      if isinstance(x, list | tuple) and x and np.ndim(x[0]) == 1:
        x = np.concatenate([np.asarray(v) for v in x]) if x else np.zeros(0, np.int64)
      arrays.append(_rounds_array(x, name))
    acc, prop, bon = arrays
    if not acc.shape == prop.shape == bon.shape:
      raise ValueError(f"round_accepted, round_proposed and round_bonus need one entry per round each, got "
                       f"{acc.size}, {prop.size} and {bon.size}.")
    if acc.size == 0:
      raise ValueError("AcceptanceStats: no rounds (empty round_accepted); decode something first.")
    if np.any(prop < 0) or np.any(acc < 0) or np.any(acc > prop):
      i = int(np.flatnonzero((prop < 0) | (acc < 0) | (acc > prop))[0])
      raise ValueError(f"round {i}: needs 0 ≤ round_accepted ≤ round_proposed, got accepted {acc[i]}, "
                       f"proposed {prop[i]}.")
    if np.any((bon != 0) & (bon != 1)):
      raise ValueError(f"round_bonus: wants 0 or 1 per round, got values {sorted(set(bon.tolist()))}.")
    return cls(acc, prop, bon)

  @property
  def rounds(self) -> int:
    return int(self.accepted.size)

  @property
  def tau(self) -> float:
    """τ = Σ (accepted + bonus) / rounds (a round ending on an accepted EOS has bonus 0)."""
    return float((self.accepted.sum() + self.bonus.sum()) / self.rounds)

  @property
  def acceptance_rate(self) -> float:
    """Σ accepted / Σ proposed."""
    total = int(self.proposed.sum())
    if total == 0:
      raise ValueError("acceptance_rate: no round proposed a draft.")
    return float(self.accepted.sum() / total)

  @property
  def max_proposed(self) -> int:
    return int(self.proposed.max())

  def _check_k(self, k: int, what: str) -> np.ndarray:
    if not 1 <= k:
      raise ValueError(f"{what}@k: k counts drafts from 1, got {k}.")
    eligible = self.proposed >= k
    if not eligible.any():
      raise ValueError(f"{what}@{k}: no round proposed {k} drafts (most proposed: {self.max_proposed}).")
    return eligible

  def survival(self, k: int) -> float:
    """#rounds with accepted ≥ k / #rounds with proposed ≥ k."""
    eligible = self._check_k(k, "survival")
    return float(np.sum(self.accepted >= k) / np.sum(eligible))

  def conditional(self, k: int) -> float:
    """Among rounds that proposed ≥ k: #(accepted ≥ k) / #(accepted ≥ k − 1). NaN when no such round accepted
    k − 1 (draft k was never reached)."""
    eligible = self._check_k(k, "conditional")
    reached = np.sum(eligible & (self.accepted >= k - 1))
    if reached == 0:
      return float("nan")
    return float(np.sum(eligible & (self.accepted >= k)) / reached)

  def accepted_per_position(self) -> np.ndarray:
    """[max_proposed] counts: how many rounds accepted draft k (k = 1 …)."""
    return np.array([int(np.sum(self.accepted >= k)) for k in range(1, self.max_proposed + 1)])

  def to_dict(self) -> dict:
    """Plain Python numbers: tau, rounds, proposed, accepted, bonus, acceptance_rate, and per position
    k = 1 … γ survival, conditional (None where draft k was never reached) and accepted counts."""
    ks = range(1, self.max_proposed + 1)
    return {"tau": self.tau, "rounds": self.rounds, "proposed": int(self.proposed.sum()),
            "accepted": int(self.accepted.sum()), "bonus": int(self.bonus.sum()),
            "acceptance_rate": self.acceptance_rate if self.proposed.sum() else None,
            "survival": [self.survival(k) for k in ks],
            "conditional": [None if np.isnan(c) else c for c in (self.conditional(k) for k in ks)],
            "accepted_per_position": self.accepted_per_position().tolist()}


def macro_average(values: Mapping[str, float]) -> float:
  """The unweighted mean over prompt sets of a per-set value (each set counts once, whatever its size)."""
  if not values:
    raise ValueError("macro_average: no prompt sets.")
  vals = np.asarray(list(values.values()), np.float64)
  if not np.all(np.isfinite(vals)):
    raise ValueError(f"macro_average: every per-set value must be finite, got {dict(values)}.")
  return float(vals.mean())


def tokens_per_second(tokens: int, seconds: float) -> float:
  """Generated tokens / wall-clock seconds."""
  if not seconds > 0 or tokens < 0:
    raise ValueError(f"tokens_per_second: needs tokens ≥ 0 and seconds > 0, got {tokens} and {seconds}.")
  return tokens / seconds


def speedup(timings: Timings, ar: str = "ar", speculative: str = "speculative") -> Estimate:
  """AR wall-clock / speculative wall-clock from interleaved timings (`dsv4.benchmarking.time_interleaved` over
  {ar: …, speculative: …} on identical prompts, lengths and seeds): ratio of medians with the per-pair spread.
  Raises `dsv4.benchmarking.Refused` inside the noise or for an impossible (≤ 0) time."""
  return timings.speedup(ar, speculative)


def measure_speedup(ar: Callable[[], object], speculative: Callable[[], object], repeats: int = MIN_REPEATS,
                    **timing_kw) -> tuple[Estimate, Timings]:
  """Times `ar` and `speculative` (no-argument callables decoding identical prompts, lengths and seeds) interleaved
  through `dsv4.benchmarking.time_interleaved` (warm-up first; `timing_kw` passes on_high_load, warmup, …) and
  returns (speedup, timings); raises Refused inside the noise or for an impossible time."""
  timings = time_interleaved({"ar": ar, "speculative": speculative}, repeats, **timing_kw)
  return speedup(timings), timings


def _median(x) -> float:
  return x.value if isinstance(x, Estimate) else float(x)


def predicted_speedup(tau: float, t_ar_step, t_draft, t_verify) -> float:
  """τ · T_AR-step / (T_draft + T_verify): the speedup if a round cost only its drafting and verifying."""
  ar, dr, ve = _median(t_ar_step), _median(t_draft), _median(t_verify)
  if not (tau > 0 and ar > 0 and dr >= 0 and ve > 0):
    raise ValueError(f"predicted_speedup: needs τ > 0, T_AR-step > 0, T_draft ≥ 0, T_verify > 0, got τ {tau}, "
                     f"{ar}, {dr}, {ve}.")
  return tau * ar / (dr + ve)


def loop_efficiency(measured_speedup, tau: float, t_ar_step, t_draft, t_verify):
  """measured speedup / (τ · T_AR-step / (T_draft + T_verify)), component times (seconds, or Estimates whose
  medians are used) from the same run. With an Estimate speedup, an Estimate (its spread scaled alike)."""
  pred = predicted_speedup(tau, t_ar_step, t_draft, t_verify)
  if isinstance(measured_speedup, Estimate):
    return measured_speedup.scaled(1.0 / pred)
  if not measured_speedup > 0:
    raise ValueError(f"loop_efficiency: the measured speedup must be > 0, got {measured_speedup}.")
  return measured_speedup / pred


def time_split(t_round, t_draft, t_verify) -> dict:
  """{'draft', 'verify', 'other'} seconds per round (medians where Estimates are given) and their fractions;
  other = T_round − T_draft − T_verify, refused (Refused) if negative: the parts cannot take longer than the
  whole round."""
  rd, dr, ve = _median(t_round), _median(t_draft), _median(t_verify)
  other = rd - dr - ve
  if not rd > 0 or other < 0:
    raise Refused(f"time_split: round {rd:.4g} s < draft {dr:.4g} s + verify {ve:.4g} s is impossible; the "
                  "component timings are inside the noise. Time them again on a calm machine.")
  return {"draft": dr, "verify": ve, "other": other, "draft_frac": dr / rd, "verify_frac": ve / rd,
          "other_frac": other / rd}
