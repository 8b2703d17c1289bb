"""`dsv4.load_drafter` on paths a user types: relative ones work, broken checkpoints get one clear line."""

import os
import shutil
import traceback
from pathlib import Path

import pytest

import dsv4
from dsv4.errors import CheckpointError
from dsv4.io.drafter_checkpoint import checkpoint_dir


def test_relative_paths_resolve_from_the_current_directory(tmp_path, monkeypatch):
  step = tmp_path / "runs" / "dspark-tiny" / "checkpoints" / "20"
  (step / "meta").mkdir(parents=True)
  (step / "state").mkdir()
  monkeypatch.chdir(tmp_path)
  found = checkpoint_dir("runs/dspark-tiny")
  assert found.is_absolute() and found == step


def test_missing_meta_names_the_folder(tmp_path):
  step = tmp_path / "checkpoints" / "20"
  (step / "state").mkdir(parents=True)
  (step / "meta").mkdir()
  (step / "meta").rmdir()
  with pytest.raises(CheckpointError, match="no meta/ folder"):
    dsv4.load_drafter(step)


def test_unreadable_meta_is_one_line_with_advice(tmp_path):
  step = tmp_path / "checkpoints" / "20"
  (step / "meta").mkdir(parents=True)
  (step / "state").mkdir()
  (step / "meta" / "garbage").write_bytes(b"\xff" * 64)
  with pytest.raises(CheckpointError, match="meta is unreadable") as err:
    dsv4.load_drafter(step)
  message = str(err.value)
  assert "use another step folder" in message and len(message.splitlines()) == 1 and len(message) < 600
  assert len("".join(traceback.format_exception(err.value)).splitlines()) < 25


def test_unreadable_state_is_a_short_error_not_the_tensorstore_spec(tmp_path):
  """The shipped drafter with its largest array file cut in half: one CheckpointError naming the folder, and a
  traceback of a few frames, not orbax's chained error with ~100 lines of TensorStore spec."""
  drafter = tmp_path / "small-dspark"
  shutil.copytree(Path(__file__).resolve().parents[2] / "assets/drafters/small-dspark", drafter)
  largest = max((p for p in (drafter / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  os.truncate(largest, largest.stat().st_size // 2)
  with pytest.raises(CheckpointError, match=r"small-dspark/state is unreadable .*use another step folder") as err:
    dsv4.load_drafter(drafter)
  shown = "".join(traceback.format_exception(err.value))
  assert len(shown.splitlines()) < 25 and "'driver'" not in shown, shown[:3000]


def test_no_checkpoint_at_all(tmp_path):
  with pytest.raises(CheckpointError, match="no drafter checkpoint"):
    dsv4.load_drafter(tmp_path)
