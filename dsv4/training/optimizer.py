"""Optimizer from the `train` config section: AdamW or Muon (optax), linear warmup + cosine decay, global-norm
clipping. Weight decay applies to matrices only (norm weights, sinks, biases and 1-D tables are exempt).

  train.optimizer      "adamw" | "muon"   (Muon orthogonalises 2-D updates; other leaves use Adam)
  train.lr, train.warmup_steps (or warmup_fraction), train.steps, train.min_lr_ratio
  train.b1, train.b2, train.weight_decay, train.clip_norm
"""

from __future__ import annotations

import jax
import optax

from dsv4.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")


def warmup_steps(train) -> int:
  if train.get("warmup_steps", None) is not None:
    return int(train.warmup_steps)
  return max(1, round(train.get("warmup_fraction", 0.04) * train.steps))


def learning_rate(train) -> optax.Schedule:
  """Linear warmup from 0 to `lr`, then cosine to `lr·min_lr_ratio` at `steps`."""
  warm = warmup_steps(train)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.lr, warmup_steps=warm, decay_steps=max(train.steps, warm + 1),
      end_value=train.lr * train.get("min_lr_ratio", 0.1))


def _decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def check_optimizer(train) -> None:
  """The optimizer's config errors; the training loops call it before any data or model work."""
  name = train.get("optimizer", "adamw")
  if name not in OPTIMIZERS:
    raise ConfigError(f"config.train.optimizer: {name!r} is not one of {OPTIMIZERS}.")
  if not train.lr > 0:  # NaN too
    raise ConfigError(f"config.train.lr: must be > 0 (got {train.lr}).")
  if train.steps < 1:
    raise ConfigError(f"config.train.steps: must be ≥ 1 (got {train.steps}).")


def make_optimizer(train) -> optax.GradientTransformation:
  check_optimizer(train)
  name = train.get("optimizer", "adamw")
  schedule = learning_rate(train)
  wd = train.get("weight_decay", 0.0)
  if name == "adamw":
    core = optax.adamw(schedule, b1=train.get("b1", 0.9), b2=train.get("b2", 0.95), eps=1e-8, weight_decay=wd,
                       mask=_decay_mask)
  else:
    core = optax.contrib.muon(schedule, weight_decay=wd, weight_decay_mask=_decay_mask,
                              adam_b1=train.get("b1", 0.9), adam_b2=train.get("b2", 0.95), adam_weight_decay=0.0)
  clip = train.get("clip_norm", 1.0)
  return optax.chain(optax.clip_by_global_norm(clip), core) if clip else core
