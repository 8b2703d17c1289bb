"""dsv4.speculative_generate against AR decoding (`dsv4.generate`) on the tiny target: greedy output token for
token for every drafter kind, at batch 1 and 4 with prompts of different lengths; with an oracle drafter (the
target itself) so rounds accept several drafts: rollback, EOS inside an accepted draft, max_new_tokens exact,
block_size < γ. Random drafters accept little; the oracle exercises the multi-token paths."""

import numpy as np
import pytest

import dsv4
from dsv4.drafters.context import FrozenTarget
from dsv4.inference.speculative import run_speculative
from tests.inference.spec_fixtures import KINDS, TargetOracle, prompts_of, tiny_drafter, tiny_target

V = 512
PROMPTS4 = prompts_of((5, 17, 9, 30), V)
M = 20


@pytest.fixture(scope="module")
def ar4():
  return dsv4.generate(tiny_target(), PROMPTS4, M)


def check_stats(stats, outputs, gamma):
  """The stats account for every emitted token: the prefill's first token plus Σ (accepted + bonus)."""
  acc, bonus = stats["round_accepted"], stats["round_bonus"]
  assert stats["rounds"] == len(acc) == len(bonus) == len(stats["round_proposed"])
  assert stats["accepted"] == acc.sum() and stats["proposed"] == stats["round_proposed"].sum() == gamma * len(acc)
  assert len(stats["accepted_per_position"]) == gamma
  assert stats["accepted_per_position"] == [int((acc >= k).sum()) for k in range(1, gamma + 1)]
  for b, out in enumerate(outputs):
    mine = stats["round_row"] == b
    assert 1 + acc[mine].sum() + bonus[mine].sum() == len(out)
  assert stats["tau"] == pytest.approx((acc.sum() + bonus.sum()) / len(acc))
  assert all((acc <= stats["round_verified"]) & (stats["round_verified"] <= gamma))


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_equals_ar_batch4(kind, ar4):
  drafter = tiny_drafter(kind)
  got, stats = dsv4.speculative_generate(tiny_target(), drafter, PROMPTS4, M)
  assert got == ar4
  check_stats(stats, got, drafter.config.block_size)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_equals_ar_batch1(kind):
  prompt = prompts_of((11,), V, seed=3)
  want = dsv4.generate(tiny_target(), prompt, 16)
  got, stats = dsv4.speculative_generate(tiny_target(), tiny_drafter(kind), prompt, 16)
  assert got == want
  check_stats(stats, got, tiny_drafter(kind).config.block_size)


def oracle_run(prompts, max_new, gamma, period=1, wrong=(), eos_id=None):
  target = tiny_target()
  return run_speculative(target, target, FrozenTarget.of(target), prompts, max_new, gamma=gamma, temperature=0.0,
                         top_p=1.0, top_k=0, seed=0, eos_id=eos_id, adapter=TargetOracle(gamma, period, wrong))


def test_oracle_rounds_accept_several_drafts_and_roll_back(ar4):
  """Drafts wrong at positions ≡ 0, 2 (mod 7): rounds reject at different slots (after a rejection at ≡ 0 the
  next round keeps 1 draft, after one at ≡ 2 it keeps all 4), and the rows sit at different offsets."""
  got, stats = oracle_run(PROMPTS4, M, 4, 7, (0, 2))
  assert got == ar4
  check_stats(stats, got, 4)
  counts = np.bincount(stats["round_verified"], minlength=5)
  assert counts[4] > 0 and counts[1] > 0 and np.count_nonzero(counts) >= 3, counts
  assert stats["tau"] > 2


def test_oracle_full_acceptance_and_max_new_tokens_exact(ar4):
  """Every draft right: each round emits γ + 1 tokens; the last round is cut at max_new_tokens before its bonus
  ((M − 1) = 19 = 3·5 + 4: three full rounds, then 4 accepted drafts and no bonus)."""
  got, stats = oracle_run(PROMPTS4, M, 4)
  assert got == ar4 and all(len(g) == M for g in got)
  check_stats(stats, got, 4)
  for b in range(4):
    mine = stats["round_row"] == b
    np.testing.assert_array_equal(stats["round_accepted"][mine], [4, 4, 4, 4])
    np.testing.assert_array_equal(stats["round_bonus"][mine], [1, 1, 1, 0])


def test_oracle_eos_inside_an_accepted_draft(ar4):
  """EOS = row 0's 3rd new token, which the first round emits as an accepted draft (slot 2 of 4): output stops
  there (nothing after it), like AR with that EOS; the round gets no bonus; other rows stop at their own EOS."""
  eos = ar4[0][2]
  assert eos not in ar4[0][:2]
  want = dsv4.generate(tiny_target(), PROMPTS4, M, eos_id=eos)
  got, stats = oracle_run(PROMPTS4, M, 4, eos_id=eos)
  assert got == want and got[0] == ar4[0][:3]
  check_stats(stats, got, 4)
  mine = stats["round_row"] == 0
  np.testing.assert_array_equal(stats["round_accepted"][mine], [2])
  np.testing.assert_array_equal(stats["round_bonus"][mine], [0])


@pytest.mark.slow
def test_block_size_below_trained(ar4):
  """block_size 2 < γ = 4: two drafts verified per round (oracle and a real DSpark drafter), output unchanged."""
  got, stats = oracle_run(PROMPTS4, M, 2)
  assert got == ar4
  check_stats(stats, got, 2)
  assert stats["round_accepted"].max() == 2
  got, stats = dsv4.speculative_generate(tiny_target(), tiny_drafter("dspark"), PROMPTS4, M, block_size=2)
  assert got == ar4
  check_stats(stats, got, 2)


def test_no_recompilation_for_identical_shapes(ar4):
  """A second call with the same shapes and settings (another seed and EOS, which are traced) reuses the jit."""
  from dsv4.inference.speculative import _speculate
  dsv4.speculative_generate(tiny_target(), tiny_drafter("dspark"), PROMPTS4, M)
  before = _speculate._cache_size()
  dsv4.speculative_generate(tiny_target(), tiny_drafter("dspark"), PROMPTS4, M, seed=3, eos_id=7)
  assert _speculate._cache_size() == before


def abstract_dspark(drafter_changes, target_changes):
  """A DSpark drafter (shapes only) made for a tiny target with other fields."""
  from flax import nnx

  from dsv4.drafters import DSpark
  from tests.inference.spec_fixtures import TINY, drafter_cfg
  other = TINY.replace(**target_changes)
  return nnx.eval_shape(lambda: DSpark(drafter_cfg("dspark").replace(**drafter_changes), other, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("drafter_changes, target_changes, match", [
    ({}, dict(vocab_size=256), "sequential head has a vocabulary of 256"),
    (dict(hidden_size=32), dict(hidden_size=32), "drafter.hidden_size"),
    (dict(target_layer_ids=(0, 7)), dict(num_hidden_layers=8, compress_ratios=(0,) * 8), "drafter.target_layer_ids"),
])
def test_drafter_for_another_target_is_refused(drafter_changes, target_changes, match):
  """Vocabulary, width and tapped layers of the target the drafter was made for are checked against this one."""
  with pytest.raises(ValueError, match=match):
    dsv4.speculative_generate(tiny_target(), abstract_dspark(drafter_changes, target_changes), PROMPTS4, M)


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature must be a number ≥ 0"),
    (dict(top_p=0.0), "top_p must be in"),
    (dict(top_p=1.5), "top_p must be in"),
    (dict(top_k=-1), "top_k must be an integer"),
    (dict(block_size=5), r"block_size must be an integer in \[1, 4\]"),
    (dict(block_size=0), r"block_size must be an integer in \[1, 4\]"),
    (dict(eos_id=V), "eos_id 512 is outside"),
])
def test_bad_settings_fail_before_compute(kwargs, match):
  with pytest.raises(ValueError, match=match):
    dsv4.speculative_generate(tiny_target(), tiny_drafter("dspark"), PROMPTS4, M, **kwargs)


def test_bad_prompts_fail_before_compute():
  drafter = tiny_drafter("dspark")
  limit = tiny_target().config.max_position_embeddings
  with pytest.raises(ValueError, match=r"prompts\[1\] has 4090 tokens; with max_new_tokens=4 and block_size 4"):
    dsv4.speculative_generate(tiny_target(), drafter, [[1, 2], [3] * (limit - 6)], 4)
  with pytest.raises(ValueError, match=r"prompts\[0\] is empty"):
    dsv4.speculative_generate(tiny_target(), drafter, [[]], 4)
  with pytest.raises(ValueError, match="max_new_tokens must be ≥ 1"):
    dsv4.speculative_generate(tiny_target(), drafter, [[1, 2]], 0)
  with pytest.raises(TypeError, match="not a drafter the speculative loop knows"):
    dsv4.speculative_generate(tiny_target(), tiny_target(), [[1, 2]], 4)
