"""The reuse rules of a workdir, on real configs and the metadata a checkpoint records (the end-to-end refusals,
with nothing written, are in test_train_drafter.py): the same run resumes; lr, steps and cadence may change and
are reported; another kind of run, or any other changed field, is refused with the fields named."""

import json

import pytest

from dsv4.configs import load_config
from dsv4.training.workdir import WorkdirError, check_reuse, config_hash


def _meta(config, kind=None):
  meta = {"config": json.loads(config.to_json()), "tokens_seen": 0}
  if kind:
    meta["drafter"] = {"kind": kind, "block_size": int(config.drafter.block_size)}
  return meta


def test_the_same_config_resumes_with_no_change():
  config = load_config("configs/drafter/dspark.py:tiny")
  assert check_reuse(_meta(config, "dspark"), config, "dspark", "w", 20) == {}


def test_safe_changes_are_returned_field_by_field():
  config = load_config("configs/drafter/dspark.py:tiny")
  meta = _meta(config, "dspark")
  config.train.lr, config.train.steps, config.train.eval_every = 1e-4, 500, 7
  changes = check_reuse(meta, config, "dspark", "w", 20)
  assert changes == {"train.eval_every": [meta["config"]["train"]["eval_every"], 7],
                     "train.lr": [meta["config"]["train"]["lr"], 1e-4],
                     "train.steps": [meta["config"]["train"]["steps"], 500]}


def test_another_drafter_kind_is_refused_with_the_config_hash():
  saved = load_config("configs/drafter/dspark.py:tiny")
  meta = _meta(saved, "dspark")
  with pytest.raises(WorkdirError) as info:
    check_reuse(meta, load_config("configs/drafter/eagle3.py:tiny"), "eagle3", "runs/x", 20)
  assert str(info.value) == (f"--workdir runs/x (step 20, config hash {config_hash(meta['config'])}) holds a dspark "
                             "run, and this is an eagle3 run; use a new --workdir or the --config of that run.")


def test_a_changed_shape_field_is_refused_naming_it_among_safe_changes():
  config = load_config("configs/drafter/dspark.py:tiny")
  meta = _meta(config, "dspark")
  config.drafter.block_size, config.train.lr = 3, 1e-4
  with pytest.raises(WorkdirError, match=r"Changed: drafter\.block_size: 4 → 3\. Only train\.steps") as info:
    check_reuse(meta, config, "dspark", "w", 20)
  assert "train.lr" not in str(info.value).split("Changed:")[1].split(". Only")[0]  # the safe one is not blamed


def test_a_target_workdir_given_to_a_drafter_and_back():
  target = load_config("configs/target/tiny.py")
  with pytest.raises(WorkdirError, match=r"is a target pretraining workdir\. Use a new --workdir for the dspark"):
    check_reuse(_meta(target), load_config("configs/drafter/dspark.py:tiny"), "dspark", "w", 150)
  drafter = load_config("configs/drafter/dspark.py:tiny")
  with pytest.raises(WorkdirError, match=r"holds a dspark run, and this is a target pretraining run"):
    check_reuse(_meta(drafter, "dspark"), target, "target", "w", 20)
