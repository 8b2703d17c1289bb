"""Speculative decoding on the committed `small` target (assets/targets/small) equals its AR greedy output token for
token: a random DSpark drafter (accepts little), the target's own trained MTP module chained (MTP-k: rounds accept
several drafts), and the oracle drafter with the target's EOS, on real text prompts of different lengths."""

import os

import numpy as np
import pytest
from tokenizers import Tokenizer

import dsv4
from dsv4.configs import load_config
from dsv4.drafters.build import build_drafter
from dsv4.drafters.context import FrozenTarget
from dsv4.inference.speculative import run_speculative
from dsv4.training.distill_config import drafter_config
from tests.inference.spec_fixtures import ROOT, TargetOracle

SMALL = os.path.join(ROOT, "assets/targets/small")
TEXTS = ["def fibonacci(n):\n    ", "import os\n\nclass Config:\n    def __init__(self, path):\n        self.",
         "for i in range(", "    return sorted(items, key=lambda x: x["]
M = 24


@pytest.fixture(scope="module")
def small():
  target = dsv4.from_pretrained(SMALL)
  tok = Tokenizer.from_file(os.path.join(SMALL, "tokenizer.json"))
  prompts = [[target.config.bos_token_id] + tok.encode(t).ids for t in TEXTS]
  return target, prompts, dsv4.generate(target, prompts, M)


def drafter(kind, target):
  cfg = drafter_config(load_config(os.path.join(ROOT, f"configs/drafter/{kind}.py:small")))
  return build_drafter(cfg, target.config, seed=0, target=target)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dspark", "mtp"])
def test_greedy_equals_ar_on_small(small, kind):
  target, prompts, want = small
  assert len({len(p) for p in prompts}) == len(prompts)
  got, stats = dsv4.speculative_generate(target, drafter(kind, target), prompts, M)
  assert got == want
  if kind == "mtp":   # the target's own trained MTP module drafts well: rounds keep several drafts
    assert stats["round_accepted"].max() >= 2 and stats["tau"] > 1.5, stats["tau"]
  got1, _ = dsv4.speculative_generate(target, drafter(kind, target), prompts[1:2], M)
  assert got1 == want[1:2]


@pytest.mark.slow
def test_oracle_with_eos_on_small(small):
  """EOS = a token row 0 emits mid-way (inside an accepted draft of the oracle's rounds): outputs equal AR's."""
  target, prompts, want = small
  eos = want[0][7]
  ar = dsv4.generate(target, prompts, M, eos_id=eos)
  got, stats = run_speculative(target, target, FrozenTarget.of(target), prompts, M, gamma=5, temperature=0.0,
                               top_p=1.0, top_k=0, seed=0, eos_id=eos, adapter=TargetOracle(5, 9, (0, 4)))
  assert got == ar and len(got[0]) <= 8
  assert np.max(stats["round_accepted"]) >= 3
