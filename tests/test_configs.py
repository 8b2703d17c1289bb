"""Target config files: they load, validate and cover every ModelConfig field; bad values name the field. Drafter
config files load at every scale without touching sys.path."""

import dataclasses
from pathlib import Path

import ml_collections
import pytest

from dsv4.configs import load_config, model_config, sibling, split_spec
from dsv4.errors import ConfigError
from dsv4.model.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("tiny", "small", "base", "v4_flash", "v4_pro")
FIELDS = {f.name for f in dataclasses.fields(ModelConfig)}


def target(name, variant=None):
  return load_config(f"configs/target/{name}.py" + (f":{variant}" if variant else ""))


@pytest.mark.parametrize("name", TARGETS)
def test_target_loads_validates_and_lists_every_field(name):
  cfg = target(name)
  assert set(cfg.model.keys()) == FIELDS  # every field overridable from the command line
  assert isinstance(cfg.model.compress_ratios, tuple)
  assert isinstance(cfg.model.yarn, ml_collections.ConfigDict)
  mc = model_config(cfg)
  assert isinstance(mc, ModelConfig)
  assert mc.num_hash_layers >= 1 and mc.num_nextn_predict_layers == 1


def test_scaled_targets_exercise_every_layer_kind():
  for name in ("tiny", "small", "base"):
    mc = model_config(target(name))
    assert {"sliding", "csa", "hca"} <= set(mc.attention_kinds), name
    assert 0 < mc.num_hash_layers < mc.num_hidden_layers, name  # both hash- and score-routed layers


def test_v4_flash_matches_reference_table():
  mc = model_config(target("v4_flash"))
  expected = dict(
      hidden_size=4096, num_hidden_layers=43, num_attention_heads=64, head_dim=512, q_lora_rank=1024,
      qk_rope_head_dim=64, o_groups=8, o_lora_rank=1024, n_routed_experts=256, n_shared_experts=1,
      num_experts_per_tok=6, moe_intermediate_size=2048, scoring_func="sqrtsoftplus", routed_scaling_factor=1.5,
      num_hash_layers=3, sliding_window=128, index_n_heads=64, index_head_dim=128, index_topk=512,
      compress_ratios=(0, 0) + (4, 128) * 20 + (4,), hc_mult=4, hc_sinkhorn_iters=20, hc_eps=1e-6,
      rope_theta=10000.0, compress_rope_theta=160000.0, swiglu_limit=10.0, num_nextn_predict_layers=1,
      vocab_size=129280, rms_norm_eps=1e-6, max_position_embeddings=1048576)
  assert {k: getattr(mc, k) for k in expected} == expected
  assert (mc.yarn.factor, mc.yarn.original_max_position_embeddings) == (16.0, 65536)


def test_v4_pro_matches_reference_table():
  mc = model_config(target("v4_pro"))
  expected = dict(
      hidden_size=7168, num_hidden_layers=61, num_attention_heads=128, head_dim=512, q_lora_rank=1536,
      o_groups=16, o_lora_rank=1024, n_routed_experts=384, n_shared_experts=1, num_experts_per_tok=6,
      moe_intermediate_size=3072, routed_scaling_factor=2.5, index_topk=1024, num_hash_layers=3,
      sliding_window=128, hc_mult=4, vocab_size=129280, max_position_embeddings=1048576)
  assert {k: getattr(mc, k) for k in expected} == expected
  kinds = mc.attention_kinds
  assert (len(kinds), kinds.count("hca"), kinds.count("csa")) == (61, 31, 30)


@pytest.mark.parametrize("name", ("tiny", "small", "base", "v4_flash", "v4_pro"))
def test_bf16_variant(name):
  mc = model_config(target(name, "bf16"))
  assert (mc.dtype, mc.param_dtype) == ("bfloat16", "bfloat16")
  assert model_config(target(name)).dtype == "float32"


def test_unknown_variant_names_it():
  with pytest.raises(ConfigError, match="unknown variant 'fp8'"):
    target("small", "fp8")


def test_split_spec():
  assert split_spec("configs/target/tiny.py") == ("configs/target/tiny.py", None)
  assert split_spec("configs/target/tiny.py:bf16") == ("configs/target/tiny.py", "bf16")
  assert split_spec("configs/target/tiny.py:") == ("configs/target/tiny.py", None)


def test_missing_file_names_the_path():
  with pytest.raises(ConfigError, match="configs/target/nope.py"):
    load_config("configs/target/nope.py:bf16")


def test_file_without_get_config_names_it(tmp_path):
  path = tmp_path / "empty.py"
  path.write_text("X = 1\n")
  with pytest.raises(ConfigError, match=r"empty\.py.*get_config"):
    load_config(str(path))


def test_overrides_round_trip():
  cfg = target("tiny")
  cfg.model.num_hidden_layers = 3
  cfg.model.compress_ratios = [128, 4, 0]  # lists become tuples
  cfg.model.yarn.factor = 4.0
  mc = model_config(cfg)
  assert mc.compress_ratios == (128, 4, 0) and mc.yarn.factor == 4.0


# Each bad value must fail with a ConfigError naming the field, through both entry points.
BAD = [
    (dict(o_groups=3), "model.o_groups"),  # 4 heads
    (dict(compress_ratios=(0, 4, 64, 4)), "model.compress_ratios"),
    (dict(num_hash_layers=5), "model.num_hash_layers"),  # 4 layers
    (dict(hidden_sise=64), "hidden_sise"),
    (dict(yarn=dict(factr=2.0)), "yarn.factr"),
]


@pytest.mark.parametrize("change,field", BAD)
def test_bad_value_names_field_from_mapping(change, field):
  values = target("tiny").model.to_dict()
  values.update(change)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    ModelConfig.from_mapping(values)


@pytest.mark.parametrize("change,field", BAD)
def test_bad_value_names_field_from_config(change, field):
  cfg = target("tiny")
  with cfg.model.unlocked():
    for k, v in change.items():
      if k == "yarn":
        cfg.model.yarn.update(v)
      else:
        setattr(cfg.model, k, v)
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    model_config(cfg)


def test_missing_model_section():
  with pytest.raises(ConfigError, match="no `model` section"):
    model_config(ml_collections.ConfigDict({"train": {"steps": 1}}))


DRAFTERS = sorted(p.stem for p in (REPO / "configs/drafter").glob("*.py") if p.stem != "drafter_scales")


@pytest.mark.parametrize("name", DRAFTERS)
def test_drafter_configs_load_every_scale_and_leave_sys_path_alone(name):
  """A config folder on sys.path would let its files (dspark.py, mtp.py, …) shadow modules of those names."""
  import sys

  from dsv4.training.distill_config import drafter_config
  scales = sibling(str(REPO / "configs/drafter/dspark.py"), "drafter_scales").SCALES
  before = list(sys.path)
  for scale in scales:
    config = load_config(f"{REPO}/configs/drafter/{name}.py:{scale}")
    assert drafter_config(config).hidden_size > 0
  assert sys.path == before
  assert "sys.path" not in (REPO / "configs/drafter" / f"{name}.py").read_text()
