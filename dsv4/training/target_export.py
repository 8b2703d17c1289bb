"""A trained target out of its training workdir: restore the latest checkpoint as a model (dsv4.io.target), round it
to a storage dtype, and measure what was exported (validation cross-entropy of the rounded weights, the corpus's unigram
entropy under the same tokenizer) for the provenance file that travels with the weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dsv4.configs import model_config
from dsv4.data.corpus import unigram_entropy
from dsv4.io.target import latest_checkpoint, restore_model  # noqa: F401  (used by export_target.py)
from dsv4.model.layers import FrozenState
from dsv4.model.transformer import Transformer
from dsv4.training import data_setup, pretrain


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
  sums_2 = pretrain.zero_sums()
  for batch in data_setup.val_stream(splits, config.data, cfg, batch_size):
    sums_2 = eval_step(nnx.to_pure_dict(params), nnx.to_pure_dict(frozen),
                       {k: jnp.asarray(v) for k, v in batch.items()}, sums_2)
  total, count = (float(x) for x in jax.device_get(sums_2))
  return total / max(count, 1.0)


def split_unigram_entropy(ds, vocab_size: int) -> float:
  return unigram_entropy((np.asarray(ids, np.int64) for ids in ds["ids"]), vocab_size)
