"""dsv4.generate: greedy equals transformers' greedy generate; sampling filters and statistics; EOS handling;
bad prompts fail before compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import dsv4
from dsv4.inference.generate import prefill
from dsv4.sampling import filter_logits, row_keys, sample
from tests.io import hf_reference as ref


@pytest.fixture(scope="module", params=["hc2_e8k2", "hc4_e16k4"])
def pair(request, tmp_path_factory):
  hf = ref.build(request.param, seed=0)
  path = tmp_path_factory.mktemp("gen")
  hf.save_pretrained(path)
  return hf, dsv4.from_pretrained(path)


def test_greedy_equals_transformers(pair):
  """A batch of prompts of different lengths, generated together, equals transformers on each prompt alone."""
  hf, ours = pair
  rng = np.random.default_rng(0)
  prompts = [rng.integers(2, 512, n).tolist() for n in (3, 130, 261)]
  got = dsv4.generate(ours, prompts, max_new_tokens=24, eos_id=hf.generation_config.eos_token_id)
  for p, g in zip(prompts, got, strict=True):
    with torch.no_grad():
      want = hf.generate(torch.tensor([p]), max_new_tokens=24, do_sample=False)[0, len(p):].tolist()
    assert g == want


def test_eos_and_max_new_tokens_per_sequence(pair):
  _, ours = pair
  prompts = [[5, 6, 7], [9, 10, 11, 12, 13]]
  free = dsv4.generate(ours, prompts, max_new_tokens=8)
  assert [len(t) for t in free] == [8, 8]
  eos = free[0][3]  # row 0 reaches this token at step 3 (or earlier if it repeats)
  stopped = dsv4.generate(ours, prompts, max_new_tokens=8, eos_id=eos)
  first = free[0].index(eos)
  assert stopped[0] == free[0][:first + 1]
  row1 = free[1][:free[1].index(eos) + 1] if eos in free[1] else free[1]
  assert stopped[1] == row1


def test_bad_prompts_fail_before_compute(pair):
  _, ours = pair
  V = ours.config.vocab_size
  with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
    dsv4.generate(ours, [[1, 2], []], 4)
  with pytest.raises(ValueError, match=r"prompts\[0\] has token id\(s\) \[" + str(V)):
    dsv4.generate(ours, [[1, V]], 4)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    dsv4.generate(ours, [[1] * ours.config.max_position_embeddings], 4)


def test_prefill_checks_max_len_and_matches_forward(pair):
  _, ours = pair
  with pytest.raises(ValueError, match=r"prompts \[1\] are longer than max_len=8"):
    prefill(ours, [[1, 2], list(range(2, 12))], max_len=8)
  prompts = [[3, 4, 5], [6, 7, 8, 9, 10, 11]]
  state, last_BV = prefill(ours, prompts, max_len=16)
  np.testing.assert_array_equal(np.asarray(state.lengths_B), [3, 6])
  for p, got in zip(prompts, np.asarray(last_BV), strict=True):
    want = np.asarray(ours(jnp.asarray([p], jnp.int32)))[0, -1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_filter_logits_matches_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 50)).astype(np.float32)
  got = np.asarray(filter_logits(jnp.asarray(logits), 0.7, top_k=10, top_p=0.6))
  for row, g in zip(logits / 0.7, got, strict=True):
    keep = np.zeros(50, bool)
    keep[np.argsort(-row)[:10]] = True
    z = np.where(keep, row, -np.inf)
    order = np.argsort(-z)
    p = np.exp(z[order] - z[order][0])
    p /= p.sum()
    before = np.cumsum(p) - p
    nucleus = order[before < 0.6]
    want = np.full(50, -np.inf, np.float32)
    want[nucleus] = row[nucleus]
    np.testing.assert_allclose(g, want, rtol=1e-6)


def _frequencies(logits, top_p, n=20000, filtered=True):
  keys = row_keys(0, 0, n)
  x = jnp.broadcast_to(jnp.asarray(logits), (n, logits.shape[0]))
  draws = sample(x, keys, 1.0, top_p=top_p) if filtered else jax.vmap(jax.random.categorical)(keys, x)
  return np.bincount(np.asarray(draws), minlength=logits.shape[0]) / n


def test_top_p_sampling_follows_renormalised_nucleus():
  """Empirical frequencies match the renormalised nucleus (3σ per token); unfiltered sampling fails the check."""
  logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], np.float32))
  want = np.array([0.4, 0.25, 0.15, 0.1, 0, 0]) / 0.9  # mass before token 3 is 0.8 < 0.85; before token 4, 0.9
  n = 20000
  tol = 3 * np.sqrt(want * (1 - want) / n) + 1e-12
  assert np.all(np.abs(_frequencies(logits, 0.85, n) - want) <= tol)
  assert not np.all(np.abs(_frequencies(logits, 0.85, n, filtered=False) - want) <= tol)
