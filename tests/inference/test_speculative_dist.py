"""At temperature > 0 speculative decoding samples AR's distribution: on a vocabulary of 8, the first 4 new tokens
of 20 000 speculative continuations against their exact probability under AR sampling, computed from the full
forward over all 8^3 prefixes (the product of the processed next-token distributions), by a chi-square test.

The drafter (DSpark, γ = 2, a strong random sequential head) drafts far from the target, so slot 1 and 2 drafts
are often rejected (residual resampling), sometimes all accepted (the 4th token is then the bonus from p_3), and
after an early rejection the 3rd/4th tokens come from the next round (rollback). The same test on two broken
acceptance rules must fail: it has power.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.drafters import DrafterConfig, DSpark, Eagle3, FrozenTarget, MTPDrafter, eagle3_config, mtp_config
from dsv4.inference import acceptance
from dsv4.inference.acceptance import processed_probs
from dsv4.inference.speculative import run_speculative
from dsv4.model import ModelConfig
from dsv4.model.transformer import jit_forward
from tests.inference.spec_fixtures import built, sharp_target

V, D, NEW = 8, 32, 4
TARGET = ModelConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=1, max_position_embeddings=64,
                     moe_impl="dense")
LAYER = dict(block_size=2, num_layers=1, hidden_size=D, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
             intermediate_size=32, target_layer_ids=(0, 1))
DRAFTER = DrafterConfig(**LAYER, markov_rank=8)
PROMPT = [3, 1, 4, 1, 5]
ROWS, SEEDS = 2000, 10


def make_drafter():
  drafter = DSpark(DRAFTER, TARGET, rngs=nnx.Rngs(1))
  k1, k2 = jax.random.split(jax.random.key(100))   # O(1) sequential-head biases: q far from p
  drafter.seq_head.w1[...] = jax.random.normal(k1, drafter.seq_head.w1.shape)
  drafter.seq_head.w2.kernel[...] = jax.random.normal(k2, drafter.seq_head.w2.kernel.shape) / np.sqrt(8)
  return drafter


@pytest.fixture(scope="module")
def target():
  return built(lambda: sharp_target(TARGET))


def drafter_of(kind, target):
  if kind == "dspark":
    return built(make_drafter)
  if kind == "eagle3":
    return built(lambda: Eagle3(eagle3_config(**LAYER), TARGET, rngs=nnx.Rngs(2)))
  return MTPDrafter.from_target(mtp_config(block_size=2, hidden_size=D), target)


def exact_probs(target, temperature, top_p):
  """P(t1..t4) under AR sampling, [V]*4: row (t1, t2, t3) of one full forward over every prompt + (t1, t2, t3)
  gives p(t_{k+1} | t_1..t_k) at its position k; the joint is their product (the chain rule)."""
  prefixes = np.array(list(itertools.product(range(V), repeat=NEW - 1)), np.int32)   # row t1·V² + t2·V + t3
  ids = np.concatenate([np.tile(PROMPT, (len(prefixes), 1)), prefixes], axis=1)
  logits = np.asarray(jit_forward(target)(jnp.asarray(ids)).logits_BTV)[:, len(PROMPT) - 1:]   # [V³, 4, V]
  probs = np.asarray(processed_probs(jnp.asarray(logits), temperature, 0, top_p), np.float64)
  probs = probs.reshape((V,) * (NEW - 1) + (NEW, V))
  joint = np.ones((V,) * (NEW - 1))
  for k, t in enumerate(np.indices((V,) * (NEW - 1))):
    joint = joint * np.take_along_axis(probs[..., k, :], t[..., None], axis=-1)[..., 0]
  return joint[..., None] * probs[..., NEW - 1, :]


def samples(target, drafter, temperature, top_p, accept):
  frozen = FrozenTarget.of(target)
  out = []
  for seed in range(SEEDS):
    got, _ = run_speculative(target, drafter, frozen, [PROMPT] * ROWS, NEW, gamma=DRAFTER.block_size,
                             temperature=temperature, top_p=top_p, top_k=0, seed=seed, eos_id=None, accept=accept)
    out.append(np.asarray(got))
  return np.concatenate(out)


def chi_square_p(counts, probs, min_expected=5.0):
  """Goodness of fit: cells with expected count < min_expected pooled into one; the p-value of the statistic."""
  n = counts.sum()
  expected = probs.ravel() * n
  counts = counts.ravel().astype(np.float64)
  big = expected >= min_expected
  obs = np.append(counts[big], counts[~big].sum())
  exp = np.append(expected[big], expected[~big].sum())
  stat = np.sum((obs - exp) ** 2 / exp)
  return float(jax.scipy.special.gammaincc((len(obs) - 1) / 2, stat / 2)), int(len(obs))


def test_exact_probs_is_the_chain_rule(target):
  """The reference itself: P(t1..t4) factorises as p(t1)·p(t2|t1)·… read off one full forward per sequence."""
  joint = exact_probs(target, 1.0, 1.0)
  seq = (2, 5, 0, 7)
  ids = np.array([PROMPT + list(seq[:3])] * 8, np.int32)   # a batch of 8 copies: another shape than the reference's
  logits = np.asarray(jit_forward(target)(jnp.asarray(ids)).logits_BTV)[0, len(PROMPT) - 1:]
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1), np.float64)
  assert joint[seq] == pytest.approx(np.prod([p[k, t] for k, t in enumerate(seq)]), rel=1e-5)


def accept_when_q_at_least_p(target_logits, draft_logits, drafts, key, temperature, top_k, top_p):
  """Broken: keep a draft whenever q(d) ≥ p(d) (the wrong way round and deterministic)."""
  B, G = drafts.shape
  p = processed_probs(target_logits, temperature, top_k, top_p)
  q = processed_probs(draft_logits, temperature, top_k, top_p)
  p_d = jnp.take_along_axis(p[:, :G], drafts[..., None], axis=-1)[..., 0]
  q_d = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
  a = jnp.sum(jnp.cumprod(q_d >= p_d, axis=1), axis=1).astype(jnp.int32)
  return a, acceptance._added_token(p, q, a, key)


def resample_from_p(target_logits, draft_logits, drafts, key, temperature, top_k, top_p):
  """Broken subtly: the right acceptance test, but a rejected slot resamples from p instead of max(0, p − q)."""
  B, G = drafts.shape
  p = processed_probs(target_logits, temperature, top_k, top_p)
  a, _ = acceptance.rejection_accept(target_logits, draft_logits, drafts, key, temperature, top_k, top_p)
  p_a = jnp.take_along_axis(p, a[:, None, None], axis=1)[:, 0]
  return a, jax.random.categorical(jax.random.fold_in(key, 9), jnp.log(p_a)).astype(jnp.int32)


@pytest.mark.slow
@pytest.mark.parametrize("kind, temperature, top_p", [("dspark", 1.0, 1.0), ("dspark", 0.8, 0.9),
                                                      ("eagle3", 1.0, 1.0), ("mtp", 0.8, 0.9)])
def test_distribution_equals_ar(target, kind, temperature, top_p):
  """Every drafter kind samples its drafts from the q the rule divides by (its processed distribution)."""
  probs = exact_probs(target, temperature, top_p)
  got = samples(target, drafter_of(kind, target), temperature, top_p, acceptance.lossless_accept)
  assert got.shape == (ROWS * SEEDS, NEW)
  counts = np.zeros((V,) * NEW)
  np.add.at(counts, tuple(got.T), 1)
  assert counts[probs == 0].sum() == 0     # nothing outside top-p ever emitted
  p, cells = chi_square_p(counts, probs)
  print(f"{kind} T={temperature} top_p={top_p}: chi-square p = {p:.3g} over {cells} cells")
  assert cells > 50, cells
  assert p > 1e-3, (p, cells)


@pytest.mark.slow
@pytest.mark.parametrize("broken", [accept_when_q_at_least_p, resample_from_p])
def test_distribution_test_has_power(target, broken):
  probs = exact_probs(target, 1.0, 1.0)
  got = samples(target, drafter_of("dspark", target), 1.0, 1.0, broken)
  counts = np.zeros((V,) * NEW)
  np.add.at(counts, tuple(got.T), 1)
  p, cells = chi_square_p(counts, probs)
  print(f"{broken.__name__}: chi-square p = {p:.3g} over {cells} cells")
  assert p < 1e-6, p
