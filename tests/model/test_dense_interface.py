"""The target interface and the family switch: both families satisfy it, the dense family shards through the one
rules table and counts its parameters, loads from tensors under transformers' names, saves what transformers
loads back, and bad configs or tensor sets are refused naming the field or tensor."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dsv4
from dsv4.drafters.context import FrozenTarget
from dsv4.errors import CheckpointError, ConfigError
from dsv4.io.dense_hf import dense_from_hf_tensors, dense_hf_tensors, save_dense_pretrained
from dsv4.io.family import build_model, count_params, family_for_model_type
from dsv4.model import DenseConfig, DenseTransformer, ModelConfig, Transformer
from dsv4.model.dense_config import dense_config_from_hf
from dsv4.model.target import FeatureTarget, Target, TargetConfig
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES, state_shardings

HF = dict(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5,
          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=True,
          bos_token_id=1, eos_token_id=2)
V4 = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
                 q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                 compress_ratios=(0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                 num_hash_layers=0, hc_mult=2, num_nextn_predict_layers=0, max_position_embeddings=128)


def tiny(**changes):
  return DenseTransformer(dense_config_from_hf({**HF, **changes}), rngs=nnx.Rngs(0))


def test_both_families_satisfy_the_interface():
  dense = tiny()
  assert isinstance(dense, Target) and isinstance(dense.config, TargetConfig)
  v4 = nnx.eval_shape(lambda: Transformer(V4, rngs=nnx.Rngs(0)))
  assert isinstance(v4, FeatureTarget) and isinstance(v4.config, TargetConfig)
  assert (dense.config.family, v4.config.family) == ("dense", "deepseek_v4")
  assert isinstance(build_model(dense.config), DenseTransformer)


def test_frozen_target_equals_the_head_tied_and_untied():
  for tied in (True, False):
    model = tiny(tie_word_embeddings=tied)
    frozen = FrozenTarget.of(model)
    h = jax.random.normal(jax.random.key(0), (3, 32))
    np.testing.assert_allclose(np.asarray(frozen.head(h)), np.asarray(model.head(h)), rtol=1e-6, atol=1e-6)
    ids = jnp.asarray([[1, 5, 7]])
    np.testing.assert_array_equal(np.asarray(frozen.embed(ids)), np.asarray(model.embed_tokens(ids)))
    assert (frozen.lm_head_DV is None) == tied


def test_shardings_come_from_the_rules_table():
  model = tiny(tie_word_embeddings=False)
  mesh = make_mesh({"data": 1, "fsdp": 2, "expert": 1, "tensor": 4})
  sh = nnx.to_flat_state(state_shardings(nnx.eval_shape(lambda: model), mesh, DEFAULT_RULES))
  spec = {".".join(map(str, p)): v.get_value().spec for p, v in sh}
  P, fsdp = jax.sharding.PartitionSpec, ("fsdp", "expert")  # `embed` is FSDP over both axes (rules.FSDP)
  assert spec["embed"] == P("tensor", fsdp)
  assert spec["lm_head"] == P(fsdp, "tensor")
  assert spec["layers.0.self_attn.q_proj.kernel"] == P(fsdp, "tensor")
  assert spec["layers.0.self_attn.k_proj.kernel"] == P(fsdp, None)
  assert spec["layers.0.mlp.down_proj.kernel"] == P("tensor", fsdp)
  assert spec["layers.0.input_layernorm.weight"] == P(None)
  # A sharded forward equals the single-device one.
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, DEFAULT_RULES)
  sharded = jax.device_put(state, shardings)
  ids = jnp.asarray(np.arange(16).reshape(2, 8) % 64)
  run = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
  np.testing.assert_allclose(np.asarray(run(sharded, ids)), np.asarray(run(state, ids)), rtol=1e-5, atol=1e-5)


def test_sharded_load_and_forward(tmp_path):
  """Each tensor is placed in its rules sharding as it is read; the mesh forward equals the plain one."""
  from dsv4.io.dense_hf import load_dense_dir
  from dsv4.parallel.forward import jit_forward_sharded
  from dsv4.parallel.rules import shardings_fn
  model = tiny(model_type="qwen2", tie_word_embeddings=False)
  path = save_dense_pretrained(model, tmp_path / "m")
  mesh = make_mesh({"data": 2, "fsdp": 2, "expert": 1, "tensor": 2})
  loaded = load_dense_dir(path, shardings=shardings_fn(mesh, DEFAULT_RULES))
  kernel = loaded.layers[0].mlp.gate_proj.kernel[...]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(("fsdp", "expert"), "tensor")
  assert len(kernel.addressable_shards) == 8 and kernel.addressable_shards[0].data.shape == (16, 24)
  ids = jnp.asarray(np.arange(32).reshape(4, 8) % 64)
  out = jit_forward_sharded(loaded, mesh, DEFAULT_RULES, tap_layers=(1,))(ids)
  want = model.forward(ids, tap_layers=(1,))
  np.testing.assert_allclose(np.asarray(out.logits_BTV), np.asarray(want.logits_BTV), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(out.taps_BTLD), np.asarray(want.taps_BTLD), rtol=1e-5, atol=1e-5)


def test_param_counts():
  D, F, V, H, J, K, L = 32, 48, 64, 4, 2, 8, 2
  per_layer = D * H * K + 2 * D * J * K + H * K * D + 3 * D * F + 2 * D
  for tied in (True, False):
    counts = count_params(tiny(tie_word_embeddings=tied))
    total = V * D + L * per_layer + D + (0 if tied else D * V)
    assert counts["total_params"] == total
    assert counts["active_params"] == total - (0 if tied else V * D)
    assert counts["breakdown"]["other"] == 0
  # Qwen3's q/k norms and Qwen2's biases are counted as attention.
  q3 = count_params(tiny(model_type="qwen3"))["breakdown"]["attention"]
  q2 = count_params(tiny(model_type="qwen2"))["breakdown"]["attention"]
  base = count_params(tiny())["breakdown"]["attention"]
  assert (q3 - base, q2 - base) == (L * 2 * K, L * (H * K + 2 * J * K))


def test_hf_tensors_round_trip_and_save_pretrained(tmp_path):
  model = tiny(model_type="qwen2", tie_word_embeddings=False)
  tensors = dense_hf_tensors(model)
  assert tensors["model.layers.1.self_attn.q_proj.weight"].shape == (32, 32)  # [out, in]
  assert "model.layers.0.self_attn.k_proj.bias" in tensors and "lm_head.weight" in tensors
  again = dense_from_hf_tensors({**HF, "model_type": "qwen2", "tie_word_embeddings": False}, tensors)
  ids = jnp.asarray([[3, 9, 27, 4]])
  np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))
  out = save_dense_pretrained(model, tmp_path / "m")
  loaded = dsv4.from_pretrained(out)
  np.testing.assert_array_equal(np.asarray(loaded(ids)), np.asarray(model(ids)))
  bf16 = dsv4.from_pretrained(out, dtype="bfloat16", param_dtype="bfloat16")
  assert bf16.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
  assert bf16.layers[0].input_layernorm.weight[...].dtype == jnp.float32


def test_orbax_checkpoint_records_the_family(tmp_path):
  from dsv4.io.checkpoint import load_model, save_model
  model = tiny(model_type="qwen3")
  save_model(model, tmp_path / "ckpt")
  assert json.loads((tmp_path / "ckpt" / "dsv4_config.json").read_text())["family"] == "dense"
  again = load_model(tmp_path / "ckpt")
  assert isinstance(again, DenseTransformer) and again.config == model.config
  ids = jnp.asarray([[3, 9, 27, 4]])
  np.testing.assert_array_equal(np.asarray(again(ids)), np.asarray(model(ids)))


def test_legacy_config_layouts():
  """Llama 2 (no head_dim, top-level rope_theta) and Llama 3.1's published layout (rope_scaling + rope_theta, a list
  of EOS ids) read as the transformers 5 layout does."""
  llama2 = {k: v for k, v in HF.items() if k not in ("head_dim", "rope_parameters")}
  cfg = dense_config_from_hf({**llama2, "rope_theta": 10000.0, "rope_scaling": None})
  assert (cfg.head_dim, cfg.rope_theta, cfg.rope_scaling) == (8, 10000.0, None)
  scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=64)
  old = dense_config_from_hf({**llama2, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling},
                              "eos_token_id": [2, 3]})
  new = dense_config_from_hf({**HF, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
  assert old == new and old.rope_scaling.factor == 8.0 and old.eos_token_id == 2


def test_unknown_model_type_lists_the_supported_ones(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({**HF, "model_type": "mistral"}))
  with pytest.raises(ConfigError, match=r"model_type.*'mistral'.*deepseek_v4, llama, qwen2, qwen3"):
    dsv4.from_pretrained(tmp_path)
  assert family_for_model_type("qwen3").name == "dense"


@pytest.mark.parametrize("change, match", [
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}), "rope_parameters.*yarn"),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}), "low_freq_factor"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(intermediate_size=None), "intermediate_size"),
    (dict(eos_token_id=99), "eos_token_id"),
])
def test_bad_config_names_the_field(change, match):
  with pytest.raises(ConfigError, match=match):
    dense_config_from_hf({**HF, **change})


def test_tensor_set_mismatch_is_one_error_naming_the_tensors():
  tensors = dense_hf_tensors(tiny())
  del tensors["model.layers.1.mlp.up_proj.weight"]
  tensors["model.layers.0.self_attn.o_proj.weight"] = np.zeros((5, 5), np.float32)
  tensors["model.layers.0.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(CheckpointError) as e:
    dense_from_hf_tensors(HF, tensors)
  msg = str(e.value)
  assert "missing: model.layers.1.mlp.up_proj.weight" in msg
  assert "unexpected: model.layers.0.extra.weight" in msg
  assert "model.layers.0.self_attn.o_proj.weight: checkpoint (5, 5) vs model (32, 32)" in msg


def test_v4_only_drafters_refuse_a_dense_target():
  from dsv4.drafters import DrafterConfig
  cfg = tiny().config
  with pytest.raises(ConfigError, match="kind.*MTP module"):
    DrafterConfig(kind="mtp", hidden_size=32, target_layer_ids=(0,)).check_against_target(cfg)
  with pytest.raises(ConfigError, match="layer_type.*'v4'"):
    DrafterConfig(layer_type="v4", hidden_size=32, target_layer_ids=(0,)).check_against_target(cfg)
  with pytest.raises(ValueError, match="with_mtp"):
    tiny().forward(jnp.zeros((1, 4), jnp.int32), with_mtp=True)
  assert isinstance(cfg, DenseConfig) and DenseConfig.from_mapping(cfg.to_dict()) == cfg
