"""Padding the prompt buffer to a bucket (one compilation for many prompt lengths) changes no token: AR and greedy
speculative decoding on the tiny target give the unpadded AR output, and the width rule keeps within the model's
positions."""

import pytest

import dsv4
from dsv4.inference.generate import padded_width
from tests.inference.spec_fixtures import prompts_of, tiny_drafter, tiny_target


def test_padded_width():
  assert padded_width([5, 17], 16) == 32 and padded_width([16], 16) == 16 and padded_width([5], 1) == 5
  assert padded_width([30], 16, limit=40) == 32 and padded_width([30], 16, limit=31) == 31
  assert padded_width([50], 16, limit=40) == 50  # never shorter than the longest prompt (the request check refuses)
  for bad in (0, -3, 2.0, True):
    with pytest.raises(ValueError, match="prompt_bucket"):
      padded_width([5], bad)


@pytest.mark.slow  # four compiled decode loops: 3.5 minutes on 2 shared cores
def test_bucketed_decoding_equals_unpadded_ar():
  target, drafter = tiny_target(), tiny_drafter("dspark")
  prompts = prompts_of([5, 11], target.config.vocab_size, seed=4)
  want = [dsv4.generate(target, [p], 10)[0] for p in prompts]
  for p, w in zip(prompts, want, strict=True):
    assert dsv4.generate(target, [p], 10, prompt_bucket=16)[0] == w
    out, stats = dsv4.speculative_generate(target, drafter, [p], 10, prompt_bucket=16)
    assert out[0] == w and stats["tau"] >= 1
