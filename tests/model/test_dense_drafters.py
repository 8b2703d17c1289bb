"""Every drafter kind that needs no V4 internals (DSpark, DFlash, EAGLE-3) builds against a tiny random dense
target, trains a few steps on online features from it (the target forward inside the jitted step, through the
target interface), and proposes from context the target's cached decode produced."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import ConfigDict

from dsv4.data.anchors import batch_anchors
from dsv4.data.packing import pack_documents
from dsv4.drafters import DrafterConfig, dflash_config
from dsv4.drafters.build import build_drafter
from dsv4.drafters.config import eagle3_config
from dsv4.drafters.context import FrozenTarget
from dsv4.drafters.dspark import jit_propose
from dsv4.drafters.eagle3 import jit_eagle3_propose, previous_taps
from dsv4.model import DenseTransformer
from dsv4.model.dense_config import dense_config_from_hf
from dsv4.training import distill, train_state
from dsv4.training.optimizer import learning_rate, make_optimizer

TARGET = dense_config_from_hf(dict(
    model_type="qwen3", vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256, rms_norm_eps=1e-6,
    tie_word_embeddings=True, bos_token_id=1, eos_token_id=2))
COMMON = dict(block_size=4, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              intermediate_size=48, target_layer_ids=(0, 2))
KINDS = {"dspark": DrafterConfig(num_layers=2, markov_rank=8, **COMMON),
         "dflash": dflash_config(num_layers=2, **COMMON), "eagle3": eagle3_config(**COMMON)}
T = 48
TRAIN = ConfigDict(dict(lr=3e-3, steps=20, warmup_steps=1, weight_decay=0.0, clip_norm=1.0))


@functools.cache
def target():
  return DenseTransformer(TARGET, rngs=nnx.Rngs(0))


def jitted(module, method: str, **static):
  """`module.method(*args)` jitted over its state (eager dispatch of every small op is slow on a busy CPU)."""
  graphdef, state = nnx.split(module)
  run = jax.jit(lambda st, args, kw: getattr(nnx.merge(graphdef, st), method)(*args, **kw, **static))
  return lambda *args, **kw: run(state, args, kw)


def rows(seed=0, batch=2):
  rng = np.random.default_rng(seed)
  docs = [rng.integers(3, TARGET.vocab_size, size=rng.integers(8, 30)) for _ in range(10)]
  masks = [np.r_[np.zeros(2, np.int32), np.ones(len(d) - 2, np.int32)] for d in docs]
  packed = list(pack_documents(docs, T, target_masks=masks))[:batch]
  out = {k: np.stack([getattr(r, k) for r in packed]).astype(np.int32)
         for k in ("tokens", "segment_ids", "positions", "target_mask")}
  out = {**out, **batch_anchors(out, num_anchors=4, max_blocks=8, seed=0, step=0)}
  return {k: jnp.asarray(v) for k, v in out.items() if k != "dropped"}


@pytest.mark.parametrize("kind", list(KINDS))
def test_drafter_trains_on_online_dense_features(kind):
  dcfg = KINDS[kind]
  drafter = build_drafter(dcfg, TARGET, seed=1)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  tgd, tparams, tfrozen = train_state.split_model(target())
  assert "lm_head" not in tparams  # tied: FrozenTarget reads the embedding
  tgt = {"params": tparams, "frozen": tfrozen}
  loss_fn = distill.make_loss_fn(graphdef, dcfg, drafter.feature_names, tgd, TARGET, "online")
  optimizer = make_optimizer(TRAIN)
  step = distill.make_train_step(loss_fn, optimizer, learning_rate(TRAIN))
  state = {"params": params, "rest": rest, "opt": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}
  batch = rows()
  losses = []
  for _ in range(6):
    state, sums = step(state, tgt, batch)
    losses.append(distill.pool([jax.device_get(sums)])["loss"])
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  # The step's target logits are the dense target's own: head(final hidden) at the supervised slots.
  _, aux = jax.jit(loss_fn)(state["params"], state["rest"], tgt, batch)
  blocks, target_logits = aux[1], aux[4]
  packed = jitted(target(), "forward")(batch["tokens"], positions_BT=batch["positions"],
                                                segment_ids_BT=batch["segment_ids"])
  rows_BAG = np.minimum(np.asarray(blocks.anchor_BA)[..., None] + np.arange(4), T - 1)
  want = np.asarray(packed.logits_BTV)[np.arange(2)[:, None, None], rows_BAG]
  valid = np.asarray(blocks.valid_BAG) > 0
  np.testing.assert_allclose(np.asarray(target_logits)[valid], want[valid], rtol=1e-5, atol=1e-5)


def context_from_decode(n_ctx: int):
  """Taps of one prompt from the target's cached decode (prefill in two extends), as inference would have them."""
  model = target()
  prompt = jnp.asarray(np.random.default_rng(5).integers(3, TARGET.vocab_size, size=(2, n_ctx + 1)), jnp.int32)
  extend = jitted(model, "extend", tap_layers=(0, 2))
  state = model.init_state(2, 32)
  a, state = extend(state, prompt[:, :5])
  b, state = extend(state, prompt[:, 5:])
  taps = jnp.concatenate([a.taps_BNLD, b.taps_BNLD], axis=1)
  full = jitted(model, "forward", tap_layers=(0, 2))(prompt)
  np.testing.assert_allclose(np.asarray(taps), np.asarray(full.taps_BTLD), atol=1e-5, rtol=0)
  return prompt, taps


@pytest.mark.parametrize("kind", ["dspark", "dflash"])
def test_dspark_proposes_from_dense_context(kind):
  n_ctx = 9
  prompt, taps = context_from_decode(n_ctx)
  drafter = build_drafter(KINDS[kind], TARGET, seed=2)
  frozen = FrozenTarget.of(target())
  ctx_kv = jitted(drafter, "context_kv")(taps[:, :n_ctx])
  anchor_B, ctx_len_B = prompt[:, n_ctx], jnp.full((2,), n_ctx, jnp.int32)
  prop = jit_propose(drafter)(ctx_kv, frozen, anchor_B, ctx_len_B)
  assert prop.tokens_BG.shape == (2, 4)
  # Teacher-forcing the drafts reproduces the proposal's logits (the block path shares nothing with the loop).
  prev_BAG = jnp.concatenate([anchor_B[:, None], prop.tokens_BG[:, :-1]], axis=1)[:, None]
  logits, _ = jitted(drafter, "block_logits")(ctx_kv, frozen, prev_BAG, ctx_len_B[:, None])
  np.testing.assert_allclose(np.asarray(logits[:, 0]), np.asarray(prop.logits_BGV), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(prop.tokens_BG), np.asarray(prop.logits_BGV).argmax(-1))


def test_eagle3_proposes_from_dense_context():
  n_ctx = 9
  prompt, taps = context_from_decode(n_ctx)
  drafter = build_drafter(KINDS["eagle3"], TARGET, seed=3)
  frozen = FrozenTarget.of(target())
  pos = jnp.broadcast_to(jnp.arange(n_ctx + 1, dtype=jnp.int32), (2, n_ctx + 1))
  prev = previous_taps(taps, pos, jnp.ones_like(pos))
  ctx_kv = jitted(drafter, "context_kv")(frozen, prompt, prev, pos)
  ctx_len_B = jnp.full((2,), n_ctx, jnp.int32)
  prop = jit_eagle3_propose(drafter)(ctx_kv, frozen, prev[:, n_ctx], prompt[:, n_ctx], ctx_len_B)
  assert prop.tokens_BG.shape == (2, 4)
  tokens = np.asarray(prop.tokens_BG)
  assert ((tokens >= 0) & (tokens < TARGET.vocab_size)).all()
  np.testing.assert_array_equal(tokens, np.asarray(prop.logits_BGV).argmax(-1))
