"""The trainer's logged τ_prob (distill._metric_sums pooled by distill.pool) is DeepSpec's: the mean over the
blocks of all batches of each block's 1 + Σ_k Π_{j≤k} α_j, checked against a loop over blocks."""

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from dsv4.training import distill
from tests.drafters.test_losses import naive_tau_prob


def batch_sums(l1, valid):
  out = {k: jnp.float32(1.0) for k in distill.LOSS_TERMS}
  out.update(weight_sum=jnp.float32(2.0), l1_BAG=jnp.asarray(l1))
  blocks = SimpleNamespace(valid_BAG=jnp.asarray(valid))
  return {k: np.asarray(v) for k, v in distill._metric_sums(out, blocks, None, None, None).items()}


def test_logged_tau_prob_is_the_mean_over_blocks_of_all_batches():
  rng = np.random.default_rng(0)
  l1 = rng.uniform(0.0, 2.0, (2, 3, 4, 5)).astype(np.float32)  # 2 batches of [B=3, A=4, G=5]
  valid = (rng.random((2, 3, 4, 5)) < 0.85).astype(np.float32)
  valid[:, 0, 0, 0] = 1.0
  pooled = distill.pool([batch_sums(l1[i], valid[i]) for i in range(2)])
  assert pooled["tau_prob"] == pytest.approx(naive_tau_prob(l1, valid), rel=1e-5)
  assert pooled["blocks"] == float(valid[..., 0].sum())
  assert {f"accept_{k}" for k in range(5)} <= pooled.keys()  # the logged keys stay
