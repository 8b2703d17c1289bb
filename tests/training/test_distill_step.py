"""The distillation step on a tiny random target: online and offline features give the same loss, target
logits rebuilt at the slots equal the full forward's, and the training context is what inference has."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dsv4.data.anchors import batch_anchors
from dsv4.data.packing import pack_documents
from dsv4.drafters import DrafterConfig
from dsv4.drafters.build import build_drafter
from dsv4.drafters.features import gather_slots, make_blocks
from dsv4.model import ModelConfig, Transformer
from dsv4.training import distill, feature_cache, train_state

TARGET = ModelConfig(vocab_size=128, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 4, 0), index_n_heads=4, index_head_dim=8, index_topk=2,
                     n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, num_hash_layers=1,
                     hc_mult=2, num_nextn_predict_layers=0, max_position_embeddings=1024)
DRAFTER = DrafterConfig(block_size=4, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=8, intermediate_size=48, target_layer_ids=(0, 2), markov_rank=8)
T = 48


@functools.cache
def target_parts():
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: Transformer(TARGET, rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, jax.jit(lambda: nnx.state(Transformer(TARGET, rngs=nnx.Rngs(0))))())
  tgd, params, frozen = train_state.split_model(model)
  return tgd, {"params": params, "frozen": frozen}


@functools.cache
def drafter_parts():
  drafter = build_drafter(DRAFTER, TARGET, seed=1)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def rows(seed=0, batch=2):
  """Packed rows of random documents (lengths 5..30, aligned to 4 for the CSA layer), a prompt-masked prefix."""
  rng = np.random.default_rng(seed)
  docs = [rng.integers(1, TARGET.vocab_size, size=rng.integers(5, 30)) for _ in range(12)]
  masks = [np.r_[np.zeros(2, np.int32), np.ones(len(d) - 2, np.int32)] for d in docs]
  packed = list(pack_documents(docs, T, align=4, target_masks=masks))[:batch]
  out = {k: np.stack([getattr(r, k) for r in packed]).astype(np.int32)
         for k in ("tokens", "segment_ids", "positions", "target_mask")}
  return {**out, **batch_anchors(out, num_anchors=3, max_blocks=8, seed=0, step=0)}


def jnp_batch(b):
  return {k: jnp.asarray(v) for k, v in b.items() if k != "dropped"}


@functools.cache
def loss_fn(features):
  tgd, _ = target_parts()
  graphdef, _, _ = drafter_parts()
  return jax.jit(distill.make_loss_fn(graphdef, DRAFTER, ("taps",), tgd, TARGET, features))


def test_online_and_offline_features_give_the_same_loss(tmp_path):
  tgd, target = target_parts()
  _, params, rest = drafter_parts()
  batch = rows()
  online, aux_on = loss_fn("online")(params, rest, target, jnp_batch(batch))
  feats = jax.jit(lambda t, b: distill.feature_arrays(tgd, t, b, DRAFTER.target_layer_ids, ("taps",)))
  rows_only = {k: batch[k] for k in distill.ROW_FIELDS}
  feature_cache.build(tmp_path / "cache", iter([rows_only]), 1, lambda b: feats(target, jnp_batch(b)),
                      dtype="float32", log=lambda _: None)
  cached = feature_cache.FeatureCache(tmp_path / "cache").batch(0)
  assert set(cached) == {*distill.ROW_FIELDS, "hidden", "taps"}
  offline, aux_off = loss_fn("offline")(params, rest, target, jnp_batch({**cached, "anchor": batch["anchor"],
                                                                         "keep": batch["keep"]}))
  assert float(aux_on[0]["weight_sum"]) > 0
  np.testing.assert_allclose(float(offline), float(online), rtol=1e-5)
  for k in ("ce", "l1", "conf"):
    np.testing.assert_allclose(float(aux_off[0][k]), float(aux_on[0][k]), rtol=1e-5)


def test_a_bf16_cache_halves_the_feature_bytes_and_stays_close(tmp_path):
  tgd, target = target_parts()
  batch = rows(seed=1)
  rows_only = {k: batch[k] for k in distill.ROW_FIELDS}
  feats = jax.jit(lambda t, b: distill.feature_arrays(tgd, t, b, DRAFTER.target_layer_ids, ("taps",)))
  for dtype in ("float32", "bfloat16"):
    feature_cache.build(tmp_path / dtype, iter([rows_only]), 1, lambda b: feats(target, jnp_batch(b)), dtype=dtype,
                        log=lambda _: None)
  f32, bf16 = (feature_cache.FeatureCache(tmp_path / d) for d in ("float32", "bfloat16"))
  assert f32.arrays["taps"].nbytes == 2 * bf16.arrays["taps"].nbytes
  np.testing.assert_allclose(np.asarray(bf16.batch(0)["taps"], np.float32), f32.batch(0)["taps"], rtol=1e-2, atol=1e-2)
  per_token = feature_cache.bytes_per_token(TARGET.hidden_size, 2, ("taps",), "bfloat16")
  assert per_token == {"online": 16, "offline": 16 + 3 * 32 * 2}


def test_target_logits_rebuilt_at_the_slots_equal_the_full_forward():
  tgd, target = target_parts()
  batch = jnp_batch(rows())

  @jax.jit
  def both(target, batch):
    model = nnx.merge(tgd, target["params"], target["frozen"])
    out = model.forward(batch["tokens"], positions_BT=batch["positions"], segment_ids_BT=batch["segment_ids"])
    frozen = distill.frozen_target(target, TARGET)
    rebuilt = frozen.head(gather_slots(out.final_hidden_BTD, batch["anchor"], DRAFTER.block_size))
    return rebuilt, gather_slots(out.logits_BTV, batch["anchor"], DRAFTER.block_size)

  rebuilt, full = both(target, batch)
  np.testing.assert_allclose(rebuilt, full, rtol=1e-6, atol=1e-6)


def test_training_context_is_what_inference_has():
  """Each kept block's training logits equal the drafter run on the target's features of the anchor's document
  prefix alone (what a decoder has when the anchor was just committed), and tokens after the block change nothing."""
  tgd, target = target_parts()
  graphdef, params, rest = drafter_parts()
  batch = rows(seed=2)
  _, aux = loss_fn("online")(params, rest, target, jnp_batch(batch))
  _, blocks, logits, _, _ = aux
  drafter_state = (params, rest)

  @jax.jit
  def alone(target, drafter_state, prefix_1T, n_prefix, prev_11G):
    """The block run by inference: target features of the prefix alone (padding after it), drafter on them."""
    seg = (jnp.arange(T) < n_prefix).astype(jnp.int32)[None]
    taps = nnx.merge(tgd, target["params"], target["frozen"]).forward(
        prefix_1T, tap_layers=DRAFTER.target_layer_ids, positions_BT=jnp.arange(T)[None], segment_ids_BT=seg).taps_BTLD
    drafter = nnx.merge(graphdef, *drafter_state)
    frozen = distill.frozen_target(target, TARGET)
    return drafter.block_logits(drafter.context_kv(taps), frozen, prev_11G, n_prefix[None, None])[0]

  checked = 0
  for b, a in zip(*np.nonzero(batch["keep"]), strict=True):
    p = int(batch["anchor"][b, a])
    start = p - int(batch["positions"][b, p])
    if p == start:
      continue  # no context at all; covered by the drafter's own tests
    prefix = np.zeros((1, T), np.int32)
    prefix[0, :p - start] = batch["tokens"][b, start:p]
    out = alone(target, drafter_state, jnp.asarray(prefix), jnp.int32(p - start), blocks.prev_BAG[b, a][None, None])
    np.testing.assert_allclose(np.asarray(logits[b, a]), np.asarray(out[0, 0]), rtol=2e-5, atol=2e-5)
    checked += 1
  assert checked >= 4
  # Tokens after every block of row 0 (same document or not) change nothing in its blocks.
  last = int(batch["anchor"][0][batch["keep"][0] == 1].max()) + DRAFTER.block_size + 1
  changed = {**batch, "tokens": batch["tokens"].copy()}
  changed["tokens"][0, last:] = (changed["tokens"][0, last:] + 7) % TARGET.vocab_size
  _, (_, _, logits2, _, _) = loss_fn("online")(params, rest, target, jnp_batch(changed))
  keep0 = batch["keep"][0] == 1
  np.testing.assert_array_equal(np.asarray(logits2[0][keep0]), np.asarray(logits[0][keep0]))


def test_blocks_supervise_only_loss_tokens_of_the_anchors_document():
  batch = rows(seed=3)
  blocks = make_blocks(*(jnp.asarray(batch[k]) for k in ("tokens", "segment_ids", "positions", "target_mask",
                                                         "anchor", "keep")), DRAFTER.block_size)
  valid = np.asarray(blocks.valid_BAG)
  for b in range(valid.shape[0]):
    for a in range(valid.shape[1]):
      p = batch["anchor"][b, a]
      for k in range(DRAFTER.block_size):
        i = p + k + 1
        want = (batch["keep"][b, a] == 1 and i < T and batch["segment_ids"][b, i] == batch["segment_ids"][b, p]
                and batch["target_mask"][b, i] == 1)
        assert valid[b, a, k] == want, (b, a, k)
        if want:
          assert blocks.labels_BAG[b, a, k] == batch["tokens"][b, i]


@pytest.mark.parametrize("bad", [dict(target_layer_ids=(0, 3)), dict(hidden_size=48, head_dim=12)])
def test_a_drafter_that_does_not_fit_the_target_is_refused_before_compute(bad):
  from dsv4.errors import ConfigError
  with pytest.raises(ConfigError, match="target_layer_ids|hidden_size"):
    build_drafter(DRAFTER.replace(**bad), TARGET)
