"""The sections of a drafter-training config (configs/drafter/*.py): drafter, target, train, data, mesh, rules.

Every leaf is overridable on the command line (`--config.train.steps=100 --config.drafter.block_size=5`).
Train defaults follow DeepSpec's distillation recipe: AdamW lr 6e-4, 4 % warmup, cosine to 0, clip 1.0, wd 0.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dsv4.configs import _plain
from dsv4.drafters.config import DrafterConfig
from dsv4.parallel.config import mesh_section
from dsv4.training.config import data_section

FEATURE_MODES = ("online", "offline")


def drafter_section(**fields) -> ml_collections.ConfigDict:
  """Every DrafterConfig field, validated (the config's defaults overridden by `fields`)."""
  d = DrafterConfig.from_mapping(fields, where="drafter_section").to_dict()
  d["target_layer_ids"] = tuple(d["target_layer_ids"])
  return ml_collections.ConfigDict(d)


def drafter_config(config, where: str = "config.drafter") -> DrafterConfig:
  return DrafterConfig.from_mapping(_plain(config.drafter), where=where)


def target_section(path: str, config: str = "", train_steps: int = 0) -> ml_collections.ConfigDict:
  """`path`: the target (export, model checkpoint or train_target workdir); `config`: trains one there if absent."""
  return ml_collections.ConfigDict({"path": path, "config": config, "train_steps": train_steps})


def distill_train_section(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "steps": 1000,
      "batch_size": 8,             # global packed rows per step
      "seed": 0,                   # drafter init and anchor draws
      "optimizer": "adamw",
      "lr": 6e-4,
      "warmup_fraction": 0.04,
      "min_lr_ratio": 0.0,
      "b1": 0.9,
      "b2": 0.95,
      "weight_decay": 0.0,
      "clip_norm": 1.0,
      "expert_bias_rate": 1e-3,    # aux-loss-free routing-bias step of v4 drafter layers (as pretraining's)
      "moe_impl": "",              # "" = the target's; "expert_parallel" on meshes with expert > 1 (tokens go to
                                   # the devices holding their experts instead of every device running all of them)
      "features": "online",        # online: target forward inside the step | offline: the feature cache
      "cache_dir": "",             # offline cache ("" = WORKDIR/features)
      "cache_batches": 0,          # train batches cached (0 = steps, so no batch repeats)
      "cache_dtype": "bfloat16",
      "checkpoint_every": 100,
      "keep_checkpoints": 3,
      "async_checkpoints": True,
      "eval_every": 100,
      "eval_batches": 4,           # held-out batches per evaluation (the same ones every time)
      "log_every": 10,
      **overrides,
  })


def distill_data_section(**overrides) -> ml_collections.ConfigDict:
  """The pretraining data section plus anchor sampling (dsv4.data.anchors)."""
  anchors = {"num_anchors": overrides.pop("num_anchors", 16),   # per document (DeepSpec: 512 per sequence)
             "max_blocks": overrides.pop("max_blocks", 32)}     # per packed row
  section = data_section(**overrides)
  section.update(anchors)
  return section


def distill_config(drafter: dict, target: ml_collections.ConfigDict, train: dict, data: dict,
                   **drafter_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.drafter = drafter_section(**{**drafter, **drafter_overrides})
  config.target = target
  config.train = distill_train_section(**train)
  config.data = distill_data_section(**data)
  config.mesh = mesh_section()
  config.rules = ()
  return config


def drafter_fields(cfg: DrafterConfig) -> dict:
  return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
