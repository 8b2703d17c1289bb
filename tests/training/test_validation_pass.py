"""The pretraining loop's validation pass on the tiny target over 8 devices: the running sums it threads through the
jitted eval step (so its batches run in order, which two processes need to start their collectives alike) pool to
the same loss as a float64 next-token cross-entropy computed on the host from the full forward's logits, with the
weights sharded as training holds them and gathered once for the pass."""

from pathlib import Path

import jax
import numpy as np
from flax import nnx

from dsv4.configs import load_config, model_config
from dsv4.data.packing import row_loss_weights
from dsv4.model.sharded import init_sharded
from dsv4.parallel.config import mesh_from_config, rules_from_config
from dsv4.training import pretrain, pretrain_loop, train_state
from dsv4.training.optimizer import make_optimizer

REPO = Path(__file__).resolve().parents[2]
B, T = 8, 64


def _batches(vocab: int, n: int) -> list[dict]:
  """Rows of one or two documents, with padding (segment 0) and a masked stretch, so the weights vary per batch."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2 + i:] = 2
    seg[::3, T - 5 - i:] = 0
    pos = np.concatenate([np.arange(T // 2 + i), np.arange(T - T // 2 - i)])[None].repeat(B, 0).astype(np.int32)
    mask = (seg > 0).astype(np.int32)
    mask[1, : 10 + i] = 0
    tokens = np.where(seg > 0, rng.integers(1, vocab, (B, T)), 0).astype(np.int32)
    out.append({"tokens": tokens, "segment_ids": seg, "positions": pos, "target_mask": mask})
  return out


def _host_cross_entropy(model, batches) -> float:
  total = count = 0.0
  for b in batches:
    logits = np.asarray(model.forward(b["tokens"], positions_BT=b["positions"], segment_ids_BT=b["segment_ids"])
                        .logits_BTV, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp[:, :-1], b["tokens"][:, 1:, None], -1)[..., 0]
    w = np.asarray(row_loss_weights(b["segment_ids"], b["target_mask"], 1), np.float64)[:, :-1]
    total, count = total + (w * nll).sum(), count + w.sum()
  return total / count


def test_threaded_validation_sums_equal_a_host_cross_entropy_with_sharded_and_with_gathered_weights():
  config = load_config(str(REPO / "configs/target/tiny.py"))
  cfg = model_config(config)
  mesh, rules = mesh_from_config(config), rules_from_config(config)
  model = init_sharded(cfg, mesh, rules, seed=0)
  optimizer = make_optimizer(config.train)
  shardings = train_state.state_sharding(model, optimizer, mesh, rules)
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  batch_sh = pretrain.batch_sharding(mesh, rules)
  batches = _batches(cfg.vocab_size, 3)
  reference = nnx.merge(graphdef, state["params"], state["frozen"])
  expect_all, expect_two = _host_cross_entropy(reference, batches), _host_cross_entropy(reference, batches[:2])
  assert abs(expect_all - expect_two) > 1e-4  # the third batch counts

  fsdp = pretrain.make_eval_step(graphdef, config.train, shardings, batch_sh)
  replicated, place = pretrain.make_validation(graphdef, config.train, shardings, batch_sh, state)
  params, frozen = place(state["params"], state["frozen"])
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(params))  # the tiny target is gathered
  assert not all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state["params"]))
  with jax.set_mesh(mesh):
    for step, weights in ((fsdp, state), (replicated, {"params": params, "frozen": frozen})):
      pooled = pretrain_loop.evaluate(step, weights, lambda: iter(batches), batch_sh, 0)
      first_two = pretrain_loop.evaluate(step, weights, lambda: iter(batches), batch_sh, 2)
      np.testing.assert_allclose(pooled, expect_all, rtol=2e-5)
      np.testing.assert_allclose(first_two, expect_two, rtol=2e-5)
