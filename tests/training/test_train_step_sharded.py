"""The pretraining step on 8 devices equals the single-device step: same losses, gradient norm, gradient, optimizer
state, routing biases and parameters after 2 steps of the tiny target, on data=8, fsdp=2·expert=2·tensor=2 and
expert=8 with the default rules. The reference is the same step on a 1-device mesh (computed once per module).

Why not AdamW here: Adam divides each element's gradient by its own RMS, so an element whose gradient is
mathematically 0 but numerically rounding noise (at init the mHC streams are identical, so some gradients cancel to
±1e-11) moves by ±lr with a sign set by the summation order; on this model that is a 7e-4 relative parameter
difference after 2 steps. The optimizer below keeps `make_optimizer`'s clipping and matrix-only decay but uses SGD
with momentum, whose update is linear in the gradient, so 1e-5 is an honest bound on the parameters too. Its first
link, `optax.trace(decay=0)`, passes the gradient through and keeps it in its state: the step's raw gradient, as
sharded state, read back after each step.

Comparisons are per leaf: max|a − b| ≤ 1e-5·max|b| + 1e-7·G, with G the max |b| over the whole tree. The atol term
is fp32 rounding of the whole tree's scale: a leaf whose entries cancel (hc_head.scale's gradient is 1e-6 from
terms of the gradient's overall size) carries the rounding of its terms, not of its result (measured there: 2e-4
of the leaf, 1e-10 absolute).
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

from dsv4.configs import load_config, model_config
from dsv4.model.param_count import abstract_model
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES
from dsv4.parallel.sharded import init_sharded
from dsv4.training import pretrain, train_state
from dsv4.training.config import train_section
from dsv4.training.optimizer import learning_rate, make_optimizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CFG = model_config(load_config(os.path.join(ROOT, "configs/target/tiny.py")))
B, T, STEPS = 8, 256, 2
# lr 0.5 from step 0 (no warmup) so each SGD step moves the parameters well above the comparison tolerance.
TRAIN = train_section(lr=0.5, warmup_steps=0, steps=10)
METRICS = ("loss", "ce", "mtp", "grad_norm", "tokens", "expert_load_entropy")
RTOL, ATOL_OF_SCALE = 1e-5, 1e-7


def packed_batch(seed: int) -> dict[str, np.ndarray]:
  """Even rows hold one document of T − 3r tokens, odd rows two, the second starting at slot 128 (the HCA ratio,
  so each document sees the compressed windows it would see alone); segment 0 pads the rest."""
  seg = np.zeros((B, T), np.int32)
  pos = np.zeros((B, T), np.int32)
  for r in range(B):
    for s, (start, n) in enumerate([(0, T - 3 * r)] if r % 2 == 0 else [(0, 90 + r), (128, 100 + r)], 1):
      seg[r, start:start + n], pos[r, start:start + n] = s, np.arange(n)
  tokens = np.where(seg > 0, np.random.default_rng(seed).integers(1, CFG.vocab_size, (B, T)), 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": seg, "positions": pos, "target_mask": (seg > 0).astype(np.int32)}


def sgd_with_grad_probe(train) -> optax.GradientTransformation:
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  return optax.chain(optax.trace(decay=0.0), optax.clip_by_global_norm(train.clip_norm),
                     optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
                     optax.sgd(learning_rate(train), momentum=0.9))


def run_steps(model, mesh) -> dict:
  """STEPS pretraining steps of a copy of `model` on `mesh`; metrics and the step's gradients per step, final state."""
  optimizer = sgd_with_grad_probe(TRAIN)
  graphdef, state = nnx.split(model)
  model = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))  # the step donates its state; keep the caller's
  shardings = train_state.state_sharding(model, optimizer, mesh, DEFAULT_RULES)
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  batch_sh = pretrain.batch_sharding(mesh, DEFAULT_RULES)
  step = pretrain.make_train_step(graphdef, optimizer, TRAIN, learning_rate(TRAIN), shardings, batch_sh)
  metrics, grads = [], []
  with jax.set_mesh(mesh):
    for i in range(STEPS):
      batch = {k: jax.device_put(v, batch_sh[k]) for k, v in packed_batch(i).items()}
      state, m = step(state, batch)
      metrics.append({k: float(m[k]) for k in METRICS})
      grads.append(jax.tree.map(np.asarray, state["opt"][0].trace))
  return {"metrics": metrics, "grads": grads, **jax.tree.map(np.asarray, state)}


def assert_trees_close(got, want, what: str) -> None:
  scale = max(float(np.max(np.abs(w))) for w in jax.tree.leaves(want))
  got_flat = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  for path, w in jax.tree_util.tree_flatten_with_path(want)[0]:
    err, bound = float(np.max(np.abs(got_flat[path] - w))), RTOL * float(np.max(np.abs(w))) + ATOL_OF_SCALE * scale
    assert err <= bound, f"{what}{jax.tree_util.keystr(path)}: max|a-b| {err:.3g} > {bound:.3g}"


@pytest.fixture(scope="module", autouse=True)
def fresh_compiles():
  """This module compiles its programs fresh, bypassing the persistent cache tests/conftest.py sets up: with jax
  0.10.2 on CPU the sharded train step (fsdp=2·expert=2·tensor=2) loaded from that cache deadlocks, its devices
  blocked in different all-reduces, while the freshly compiled executable runs."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()  # the "is the cache used" answer is memoised per process
  yield
  jax.config.update("jax_enable_compilation_cache", enabled)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def reference():
  """The tiny target (seed 0, born on one device) and its 2 steps on a 1-device mesh."""
  model = init_sharded(CFG, make_mesh({}, jax.devices()[:1]), DEFAULT_RULES, seed=0)
  want = run_steps(model, make_mesh({}, jax.devices()[:1]))
  # The steps really moved the model: the median parameter (leaf) by far more than the comparison tolerance,
  # each relative to its own size floored at 1e-6, so a zero-initialised leaf (sinks, mHC bases) neither divides by
  # zero nor, counting once like any other leaf, carries the check alone.
  init = jax.tree.map(np.asarray, train_state.split_model(model)[1])
  moved = [float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-6)
           for a, b in zip(jax.tree.leaves(want["params"]), jax.tree.leaves(init), strict=True)]
  assert np.median(moved) > 1e3 * RTOL, sorted(moved)
  return model, want


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [{"data": 8}, {"fsdp": 2, "expert": 2, "tensor": 2}, {"expert": 8}],
                         ids=["data8", "fsdp2_expert2_tensor2", "expert8"])
def test_train_step_sharded_equals_single_device(reference, sizes):
  model, want = reference
  got = run_steps(model, make_mesh(sizes))
  for i, (g, w) in enumerate(zip(got["metrics"], want["metrics"], strict=True)):
    for k in METRICS:
      assert abs(g[k] - w[k]) <= RTOL * abs(w[k]), (i, k, g[k], w[k])
  for i in range(STEPS):
    assert_trees_close(got["grads"][i], want["grads"][i], f"grad step {i + 1}")
  assert_trees_close(got["params"], want["params"], "params")
  assert_trees_close(got["opt"][3][0].trace, want["opt"][3][0].trace, "momentum")
  assert_trees_close(got["frozen"], want["frozen"], "frozen")  # routing biases (integer loads: exact in practice)
  assert int(got["step"]) == STEPS


@pytest.mark.parametrize("sizes", [{"fsdp": 2, "expert": 2, "tensor": 2}, {"fsdp": 8}], ids=["fsdp2_expert2_tensor2",
                                                                                      "fsdp8"])
def test_train_state_over_1mib_is_sharded(sizes):
  """The base target's training state (abstract, nothing allocated): every parameter and AdamW moment over 1 MiB is
  split over the mesh (its per-device shard is smaller than the whole). tests/parallel/test_rules.py has the
  parameter half of this on the small target, but small's largest expert stacks are now exactly 1 MiB.

  Frozen state is left out: the hash-routing table tid2eid [vocab, top-k] (3 MiB) follows the `vocab` rule, which
  is `tensor` only, so on fsdp=8 it is replicated by design."""
  base = abstract_model(model_config(load_config(os.path.join(ROOT, "configs/target/base.py"))))
  optimizer = make_optimizer(train_section())
  shardings = train_state.state_sharding(base, optimizer, make_mesh(sizes), DEFAULT_RULES)
  _, params, _ = train_state.split_model(base)
  state = {"params": params, "opt": jax.eval_shape(optimizer.init, params)}
  big = 0
  for (path, leaf), sharding in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                    jax.tree.leaves({k: shardings[k] for k in state}), strict=True):
    if math.prod(leaf.shape) * leaf.dtype.itemsize > 2**20:
      big += 1
      assert math.prod(sharding.shard_shape(leaf.shape)) < math.prod(leaf.shape), (jax.tree_util.keystr(path),
                                                                                    sharding.spec)
  assert big >= 3 * 100, big  # params, mu and nu: embed, lm_head, every layer's attention and expert stacks
