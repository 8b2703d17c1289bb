"""DrafterConfig validation: bad values fail with a ConfigError naming the field; DFlash is a config."""

import pytest

from dsv4.drafters import DrafterConfig, dflash_config
from dsv4.errors import ConfigError
from dsv4.model import ModelConfig

TARGET = ModelConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, head_dim=16,
                     q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                     compress_ratios=(0, 0, 0), n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     num_hash_layers=1, hc_mult=2, num_nextn_predict_layers=0)


def small(**changes):
  base = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, intermediate_size=48,
              target_layer_ids=(0, 2), markov_rank=8)
  return DrafterConfig(**{**base, **changes})


@pytest.mark.parametrize("changes, field", [
    (dict(block_size=0), "block_size"),
    (dict(block_size=-3), "block_size"),
    (dict(layer_type="moe"), "layer_type"),
    (dict(markov="gated"), "markov"),
    (dict(markov="markov", markov_rank=0), "markov_rank"),
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(head_dim=7), "head_dim"),
    (dict(target_layer_ids=()), "target_layer_ids"),
    (dict(target_layer_ids=(1, 1)), "target_layer_ids"),
    (dict(target_layer_ids=(-1, 2)), "target_layer_ids"),
    (dict(kind="medusa"), "kind"),
    (dict(kind="eagle3"), "num_layers"),
    (dict(decay=0.0), "decay"),
    (dict(alpha_tv=-1.0), "alpha_tv"),
    (dict(confidence_head=False), "alpha_conf"),  # the default alpha_conf=1 needs the head
    (dict(dtype="float64"), "dtype"),
])
def test_bad_values_name_the_field(changes, field):
  with pytest.raises(ConfigError, match=rf"drafter\.{field}\b"):
    small(**changes)


def test_target_layer_ids_out_of_range_for_target():
  with pytest.raises(ConfigError, match=r"drafter\.target_layer_ids.*\[3\].*3 layers"):
    small(target_layer_ids=(0, 3)).check_against_target(TARGET)
  with pytest.raises(ConfigError, match=r"drafter\.hidden_size"):
    small(hidden_size=64).check_against_target(TARGET)
  small().check_against_target(TARGET)  # fits


def test_mapping_roundtrip_and_unknown_keys():
  cfg = small(block_size=3, markov="rnn")
  assert DrafterConfig.from_mapping(cfg.to_dict()) == cfg
  assert isinstance(cfg.to_dict()["target_layer_ids"], list)
  with pytest.raises(ConfigError, match="markov_rnak"):
    DrafterConfig.from_mapping({**cfg.to_dict(), "markov_rnak": 4})


def test_defaults_are_deepspec_and_dflash_is_a_config():
  d = DrafterConfig()
  assert (d.block_size, d.alpha_ce, d.alpha_tv, d.alpha_conf, d.decay, d.markov_rank) == (7, 0.1, 0.9, 1.0, 4.0, 256)
  f = dflash_config(hidden_size=32)
  assert isinstance(f, DrafterConfig) and f.kind == "dspark"
  assert (f.markov, f.confidence_head, f.alpha_ce, f.alpha_tv, f.alpha_conf) == ("none", False, 1.0, 0.0, 0.0)


def test_dflash_objectives_differ_only_in_the_loss():
  """`target` learns the target's distribution with DSpark's loss terms; `data` is the published CE-only loss. Both
  have no heads, and the two DFlash configs differ in nothing else."""
  data, target = dflash_config("data", hidden_size=32), dflash_config("target", hidden_size=32)
  dspark = DrafterConfig(hidden_size=32)
  assert (target.alpha_ce, target.alpha_tv) == (dspark.alpha_ce, dspark.alpha_tv)
  assert (target.markov, target.confidence_head, target.alpha_conf) == ("none", False, 0.0)
  differing = {k for k, v in data.to_dict().items() if target.to_dict()[k] != v}
  assert differing == {"alpha_ce", "alpha_tv"}
  with pytest.raises(ConfigError, match="objective 'kl'"):
    dflash_config("kl")


def test_dflash_config_file_takes_the_objective():
  from dsv4.configs import load_config
  data = load_config("configs/drafter/dflash.py:tiny").drafter
  target = load_config("configs/drafter/dflash.py:tiny,target").drafter
  assert (data.alpha_ce, data.alpha_tv) == (1.0, 0.0) and (target.alpha_ce, target.alpha_tv) == (0.1, 0.9)
  with pytest.raises(ConfigError, match="unknown objective 'kl'"):
    load_config("configs/drafter/dflash.py:tiny,kl")
