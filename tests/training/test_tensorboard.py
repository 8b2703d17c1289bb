"""ScalarWriter files read back by TensorBoard's own loader; disabled writers and bars stay silent."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from dsv4.training.progress import progress
from dsv4.training.tensorboard import ScalarWriter


def test_scalars_and_text_read_back(tmp_path):
  with ScalarWriter(tmp_path, enabled=True) as writer:
    writer.text(0, "config", "lr: **0.001**")
    for step in (1, 2, 5):
      writer.scalars(step, {"loss": 1.0 / step, "train/acc": np.float32(step / 10)})
    writer.scalars(6, {"loss": float("nan"), "grad_norm": float("inf")})  # written as they are
    writer.flush()
  writer.close()  # closing twice is harmless
  with pytest.raises(RuntimeError, match="closed"):
    writer.scalars(7, {"loss": 0.0})

  acc = EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()["scalars"]) == ["grad_norm", "loss", "train/acc"]
  loss = acc.Scalars("loss")
  assert [e.step for e in loss] == [1, 2, 5, 6]
  np.testing.assert_allclose([e.value for e in loss[:3]], [1.0, 0.5, 0.2], rtol=1e-6)
  assert math.isnan(loss[3].value) and acc.Scalars("grad_norm")[0].value == math.inf
  assert [(e.step, round(e.value, 6)) for e in acc.Scalars("train/acc")] == [(1, 0.1), (2, 0.2), (5, 0.5)]
  (config,) = acc.Tensors("config")
  assert tensor_util.make_ndarray(config.tensor_proto).item() == b"lr: **0.001**"


def test_non_number_is_a_clear_error(tmp_path):
  with ScalarWriter(tmp_path, enabled=True) as writer, pytest.raises(TypeError, match=r"'loss' at step 3"):
    writer.scalars(3, {"loss": "high"})


def test_disabled_writer_creates_nothing(tmp_path):
  logdir = tmp_path / "logs"
  with ScalarWriter(logdir, enabled=False) as writer:
    writer.scalars(1, {"loss": 1.0})
    writer.text(1, "config", "x")
    writer.flush()
  assert not logdir.exists()
  with ScalarWriter(tmp_path / "default") as writer:  # process 0 of 1: enabled
    assert writer.enabled
  assert len(os.listdir(tmp_path / "default")) == 1


def test_progress_smoke(capsys):
  with progress(10, initial=4, desc="train") as bar:
    bar.update(6)
    bar.set_postfix(loss=0.25)
  err = capsys.readouterr().err
  assert "train" in err and "10/10" in err and "loss=0.25" in err
  with progress(10, desc="quiet", enabled=False) as bar:
    bar.update(10)
  assert capsys.readouterr().err == ""
