"""Config values that are wrong before any data is read are refused by the training loops before the corpus, the
tokenizer, the target or the workdir is touched (the tiny drafter config would even train its target first), with
the field named; a validation split too short for the asked evaluation batches is a DataError, not StopIteration."""

import datasets
import numpy as np
import pytest

from dsv4.configs import load_config, model_config
from dsv4.errors import ConfigError, DataError
from dsv4.training import data_setup, distill_loop, pretrain_loop


def drafter_config(tmp_path):
  config = load_config("configs/drafter/dspark.py:tiny")  # its target would be trained from configs/target/tiny.py
  config.target.path, config.data.corpus_dir = str(tmp_path / "target"), str(tmp_path / "corpus")
  return config


def target_config(tmp_path):
  config = load_config("configs/target/tiny.py")
  config.data.corpus_dir = str(tmp_path / "corpus")
  return config


LOOPS = {"distill": (drafter_config, distill_loop.run, "the target at"),
         "pretrain": (target_config, pretrain_loop.run, "config.model")}
CASES = [  # (section, field, value, error, the message's start)
    ("data", "source", "{tmp}/no/such.jsonl", DataError, "config.data.source: {tmp}/no/such.jsonl: no such file"),
    ("train", "lr", -1.0, ConfigError, "config.train.lr: must be > 0"),
    ("train", "lr", float("nan"), ConfigError, "config.train.lr: must be > 0"),
    ("data", "seq_len", 6144, ConfigError, "config.data.seq_len=6144: longer than the max_position_embeddings (4096) "
                                           "of {model}"),
]


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("section, field, value, error, message", CASES)
def test_refused_before_the_corpus_the_tokenizer_the_target_and_the_workdir(loop, section, field, value, error,
                                                                             message, tmp_path):
  make, run, model = LOOPS[loop]
  config = make(tmp_path)
  config[section][field] = value.format(tmp=tmp_path) if isinstance(value, str) else value
  with pytest.raises(error) as info:
    run(config, tmp_path / "work")
  assert str(info.value).startswith(message.format(tmp=tmp_path, model=model)), str(info.value)
  assert sorted(tmp_path.iterdir()) == []  # no corpus, target or workdir


def test_the_tiny_targets_own_positions_are_accepted(tmp_path):
  """The bound is the target's, not a guess: seq_len = 4096 (the tiny target's max) passes the check, 4097 does not."""
  config = drafter_config(tmp_path)
  limit = model_config(load_config("configs/target/tiny.py")).max_position_embeddings
  config.data.seq_len = limit
  data_setup.check_data(config.data, limit)
  config.data.seq_len = limit + 1
  with pytest.raises(ConfigError, match=f"≤ {limit}"):
    data_setup.check_data(config.data, limit)


def test_a_validation_split_shorter_than_the_evaluation_batches_is_a_data_error(tmp_path):
  config = drafter_config(tmp_path)
  config.train.update(batch_size=2, eval_batches=2)
  config.data.seq_len = 4000  # the 300 validation tokens fill part of one row: one batch, not two
  docs = datasets.Dataset.from_dict({"ids": [list(np.arange(1, 101) % 500 + 1)] * 3})
  splits = data_setup.Splits(train=docs, validation=docs, tokenizer=None, manifest=None)
  target = model_config(load_config("configs/target/tiny.py"))
  with pytest.raises(DataError, match=r"packs into 1 batch\(es\).*config.data.seq_len=4000.*"
                                      r"config.train.eval_batches=2"):
    distill_loop.Data(config, splits, target, (), None, tmp_path)
  config.train.eval_batches = 1  # what the message advises: then it builds
  data = distill_loop.Data(config, splits, target, (), None, tmp_path)
  assert len(data.val) == 1 and int((data.val[0]["segment_ids"] > 0).sum()) == 300
