"""The `train` and `data` config sections of a pretraining config (every leaf overridable on the command line,
e.g. `--config.train.steps=100 --config.data.seq_len=256`)."""

from __future__ import annotations

import ml_collections

from dsv4.data.corpus import DEFAULT_CORPUS_DIR


def train_section(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "steps": 1000,
      "batch_size": 8,             # global rows per step
      "seed": 0,                   # parameter init
      "optimizer": "adamw",        # adamw | muon
      "lr": 3e-3,
      "warmup_fraction": 0.04,
      "min_lr_ratio": 0.1,
      "b1": 0.9,
      "b2": 0.95,
      "weight_decay": 0.1,
      "clip_norm": 1.0,
      "mtp_weight": 0.3,           # loss = CE + mtp_weight · mean MTP CE
      "expert_bias_rate": 1e-3,    # aux-loss-free routing-bias step
      "moe_impl": "",              # "" = the model config's
      "checkpoint_every": 100,
      "keep_checkpoints": 3,
      "async_checkpoints": True,
      "eval_every": 100,
      "eval_batches": 0,           # periodic evaluations read this many batches (0 = all); the final one reads all
      "log_every": 10,
      **overrides,
  })


def data_section(**overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "source": "stdlib",          # "stdlib" = the embedded corpus; else a local path or a hub dataset name
      "corpus_dir": DEFAULT_CORPUS_DIR,
      "corpus_vocab_size": 8192,   # BPE size when the embedded corpus is built
      "tokenizer": "",             # tokenizer.json or model dir ("" = the embedded corpus's)
      "text_field": "text",
      "train_split": "train",
      "val_split": "validation",
      "seq_len": 512,
      "align": 0,                  # document starts in packed rows; 0 = lcm of the model's compression ratios
      "seed": 0,                   # shuffling
      "chunk": -1,                 # shuffle pieces of this many tokens (-1 = seq_len, 0 = whole documents)
      **overrides,
  })
