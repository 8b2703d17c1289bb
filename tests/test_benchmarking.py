"""The timing harness: its statistics on synthetic timings (refusals of effects inside the noise and of impossible
differences, acceptance of a clear effect), and one real interleaved timing of two sleeping callables."""

import functools
import json
import time

import numpy as np
import pytest

from dsv4 import benchmarking as bm

RNG = np.random.default_rng(0)


def noisy(center, noise, n=7, seed=0):
  """n timings uniformly within center ± noise."""
  return center + np.random.default_rng(seed).uniform(-noise, noise, n)


def test_estimate_is_median_with_min_max_and_iqr():
  est = bm.estimate([5.0, 1.0, 3.0, 2.0, 4.0])
  assert (est.value, est.lo, est.hi, est.q1, est.q3, est.n) == (3.0, 1.0, 5.0, 2.0, 4.0, 5)
  assert est.fmt(".2g") == "3 (1–5, IQR 2–4)"
  with pytest.raises(ValueError, match="finite"):
    bm.estimate([1.0, float("nan")])


def test_ratio_is_ratio_of_medians_with_per_pair_spread():
  a, b = [2.0, 4.0, 6.0, 8.0, 10.0], [1.0, 1.0, 2.0, 2.0, 2.0]
  est = bm.ratio(a, b)
  assert est.value == pytest.approx(6.0 / 2.0)
  per_pair = [2.0, 4.0, 3.0, 4.0, 5.0]  # a_i / b_i by hand
  assert (est.lo, est.hi) == (min(per_pair), max(per_pair))
  assert (est.q1, est.q3) == (3.0, 4.0)


def test_b_faster_than_a_by_less_than_the_noise_is_refused():
  # B is 2 % faster than A on average while each repetition varies by ±10 %: per-pair ratios straddle 1.
  a, b = noisy(1.00, 0.10, seed=1), noisy(0.98, 0.10, seed=2)
  assert np.median(a) / np.median(b) != 1.0  # there is a nominal "speedup" to be tempted by
  est = bm.ratio(a, b)
  assert est.lo < 1.0 < est.hi
  with pytest.raises(bm.Refused, match="inside the noise"):
    bm.require_effect(est)
  value, refusal = bm.ratio_or_refusal(a, b)
  assert value is None and "inside the noise" in str(refusal)
  text, record = bm.ratio_figure(a, b)
  assert text == "refused (inside the noise: per-pair range includes 1)" and set(record) == {"refused"}
  assert "×" not in text and "." not in text  # no figure in the cell


def test_a_negative_difference_is_refused():
  # The short run (1 token) took longer than the long run (64 tokens) in some repetitions: a negative per-token time.
  short = np.array([0.10, 1.71, 0.11, 0.10, 1.60])
  long = np.array([0.56, 0.58, 0.57, 0.60, 0.55])
  with pytest.raises(bm.Refused, match="not longer in 2 of 5"):
    bm.difference(long, short, 1 / 63, "per-token time")
  t = bm.Timings({"short": short, "long": long, "peer": long * 5}, [], (0.0,) * 3, (0.0,) * 3, 2, 1)
  refused = t.difference("long", "short", 1 / 63)
  assert isinstance(refused, bm.Refused)
  assert bm.time_figure(refused)[0] == "refused (impossible: ≤ 0 in 2 of 5 repetitions)"
  assert bm.ratio_figure(t.samples["peer"], refused)[0].startswith("refused (impossible")
  with pytest.raises(bm.Refused, match="impossible"):
    bm.ratio([1.0, 2.0, -0.5, 1.0, 1.0], [1.0] * 5)


def test_a_clear_effect_is_accepted():
  # B is 3× faster with ±5 % noise on each: every per-pair ratio lies far from 1.
  a, b = noisy(3.0, 0.15, seed=3), noisy(1.0, 0.05, seed=4)
  est = bm.require_effect(bm.ratio(a, b))
  assert 2.5 < est.lo <= est.value <= est.hi < 3.5
  slower = bm.require_effect(bm.ratio(b, a))  # a slowdown beyond the noise is a result too
  assert slower.hi < 1.0
  d = bm.difference(noisy(0.56, 0.01, seed=5), noisy(0.10, 0.01, seed=6), 1 / 63)
  assert 0.0 < d.lo <= d.value <= d.hi and d.value == pytest.approx(0.46 / 63, rel=0.1)
  text, record = bm.ratio_figure(a, b)
  assert text.startswith(f"{np.median(a) / np.median(b):.3g}× (") and record["min"] > 2.5
  assert bm.markdown_table(("x", "ratio"), [("1", text)])[2] == f"| 1 | {text} |"


def test_timings_refuse_through_their_methods():
  t = bm.Timings({"a": noisy(1.0, 0.1, seed=1), "b": noisy(0.98, 0.1, seed=2)}, [], (0.0,) * 3, (0.0,) * 3, 2, 1)
  with pytest.raises(bm.Refused):
    t.speedup("a", "b")
  assert isinstance(t.difference("b", "a"), bm.Refused)
  with pytest.raises(KeyError, match="timed"):
    t.estimate("c")


def test_interleaves_a_b_a_b_and_times_each_call():
  calls = []

  def sleeper(name, seconds):
    def run():
      calls.append(name)
      time.sleep(seconds)
    return run

  t = bm.time_interleaved({"A": sleeper("A", 0.02), "B": sleeper("B", 0.005)}, repeats=5, warmup=1,
                          on_high_load="ignore")
  assert calls == ["A", "B"] * 6 and calls[:2] == ["A", "B"]  # warm-up once each, then A, B, A, B, …
  assert t.order == ["A", "B"] * 5
  # A sleep lasts at least its argument; how much longer depends on the machine's load, so no upper bound here.
  assert np.all(t.samples["A"] >= 0.02) and np.all(t.samples["B"] >= 0.005)
  assert "Load average" in t.load_line()


def test_bad_arguments_and_high_load():
  with pytest.raises(ValueError, match="repeats must be ≥ 5"):
    bm.time_interleaved({"A": lambda: None}, repeats=3)
  with pytest.raises(bm.Refused, match="busy"):
    bm.check_load("refuse", limit=-1.0)
  with pytest.warns(UserWarning, match="busy"):
    bm.check_load("warn", limit=-1.0)


def test_settle_waits_after_the_warm_up_for_the_load_to_fall(monkeypatch):
  loads = iter([0.5, 3.0, 2.5, 1.0] + [0.9] * 100)  # start check, then the compiles' own load decaying
  monkeypatch.setattr(bm.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
  naps, calls = [], []
  monkeypatch.setattr(bm.time, "sleep", naps.append)
  t = bm.time_interleaved({"A": lambda: calls.append(1)}, repeats=5, on_high_load="warn", load_limit=1.5,
                          settle_s=60)
  assert len(naps) == 2 and t.load_start[0] == 1.0  # waited twice, recorded the load the repetitions began at
  assert len(calls) == 1 + 1 + 5  # warm-up, warm again after the wait, repetitions
  loads = iter([0.5] + [3.0] * 100)  # a load that never falls: give up after settle_s, and say so in the record
  clock = iter(range(0, 1000, 30))
  monkeypatch.setattr(bm.time, "monotonic", lambda: next(clock))
  t = bm.time_interleaved({"A": lambda: None}, repeats=5, on_high_load="warn", load_limit=1.5, settle_s=60)
  assert t.load_start[0] == 3.0 and len(naps) == 3
  # and timings that ignore the load do not wait for it
  bm.time_interleaved({"A": lambda: None}, repeats=5, on_high_load="ignore", load_limit=1.5, settle_s=60)
  assert len(naps) == 3


def test_a_peer_in_its_own_process_times_itself():
  with bm.ProcessVariant(functools.partial, (time.sleep, 0.02), threads=1) as peer:
    t = bm.time_interleaved({"here": lambda: time.sleep(0.005), "there": peer}, repeats=5, on_high_load="ignore")
  assert t.order == ["here", "there"] * 5
  assert np.all(t.samples["there"] >= 0.02)  # timed in the peer's process, around its own sleep


def test_a_refused_script_ends_with_its_reason_and_status_2(capsys):
  def main(argv):
    bm.check_load("refuse", limit=-1.0)

  with pytest.raises(SystemExit) as exit_info:
    bm.run_or_refuse(main, [])
  assert exit_info.value.code == 2
  out, err = capsys.readouterr()
  assert "busy" in err and json.loads(out.strip().splitlines()[-1])["refused"].startswith("the machine is busy")


def test_greedy_tokens_must_agree_before_timing():
  assert bm.require_same_tokens([5, 6, 7], [5, 6, 7]) == "3/3"
  with pytest.raises(bm.Refused, match="agree on the first 1 of 3 tokens; at position 1 dsv4 gave 6, hf 9"):
    bm.require_same_tokens([5, 6, 7], [5, 9, 7], names=("dsv4", "hf"))
  with pytest.raises(bm.Refused, match="first 2 of 3 tokens; at position 2 dsv4 gave nothing"):
    bm.require_same_tokens([5, 6], [5, 6, 7])


def test_a_cost_ratio_near_one_is_a_figure_not_a_refusal():
  a, b = noisy(1.00, 0.10, seed=1), noisy(0.98, 0.10, seed=2)  # per-pair ratios straddle 1
  cell, figure = bm.ratio_figure(a, b, "cost")
  assert cell.startswith("refused") and set(figure) == {"refused"}
  cell, figure = bm.ratio_figure(a, b, "cost", effect=False)
  assert figure["median"] == pytest.approx(np.median(a) / np.median(b), rel=1e-3) and cell.endswith(")")
  assert figure["min"] < 1 < figure["max"]
  cell, figure = bm.ratio_figure(-a, b, "cost", effect=False)  # impossible times stay refused
  assert set(figure) == {"refused"}
