"""A trained target out of its training workdir: restore the latest checkpoint as a model, round it to a storage
dtype, and measure what was exported (validation cross-entropy of the rounded weights, the corpus's unigram
entropy under the same tokenizer) for the provenance file that travels with the weights."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from dsv4.configs import model_config
from dsv4.data.corpus import unigram_entropy
from dsv4.model.layers import FrozenState
from dsv4.model.transformer import Transformer
from dsv4.training import data_setup, pretrain
from dsv4.training.checkpointing import CheckpointError


def latest_checkpoint(workdir: str | Path) -> Path:
  root = Path(workdir).absolute() / "checkpoints"
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
  if not steps:
    raise CheckpointError(f"{root}: no finished checkpoint; train first with scripts/train_target.py --workdir "
                          f"{workdir}.")
  return root / str(steps[-1])


def restore_model(step_dir: Path) -> tuple[Transformer, ml_collections.ConfigDict, dict]:
  """(model with the checkpoint's params and routing state, the run's config, the checkpoint's meta)."""
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    meta = ckptr.restore(step_dir / "meta")
  config = ml_collections.ConfigDict(meta["config"])
  cfg = model_config(config)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, frozen = nnx.split(abstract, nnx.Param, FrozenState)
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.restore(step_dir / "state")
  return nnx.merge(graphdef, saved["params"], saved["frozen"]), config, meta


def round_params(model: Transformer, dtype) -> Transformer:
  """Trainable float weights rounded to `dtype` and back (what a bf16 file holds); routing state untouched."""
  graphdef, params, frozen = nnx.split(model, nnx.Param, FrozenState)
  params = jax.tree.map(lambda x: jnp.asarray(x).astype(dtype).astype(x.dtype), params)
  return nnx.merge(graphdef, params, frozen)


def validation_loss(model: Transformer, config, splits, batch_size: int = 8) -> float:
  """Next-token CE over the whole validation split, packed exactly as in training."""
  graphdef, params, frozen = nnx.split(model, nnx.Param, FrozenState)
  eval_step = pretrain.make_eval_step(graphdef, config.train)
  cfg = model_config(config)
  total = count = 0.0
  for batch in data_setup.val_stream(splits, config.data, cfg, batch_size):
    s, n = eval_step(nnx.to_pure_dict(params), nnx.to_pure_dict(frozen), {k: jnp.asarray(v) for k, v in batch.items()})
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def split_unigram_entropy(ds, vocab_size: int) -> float:
  return unigram_entropy((np.asarray(ids, np.int64) for ids in ds["ids"]), vocab_size)
