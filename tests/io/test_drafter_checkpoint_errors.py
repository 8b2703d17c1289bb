"""`dsv4.load_drafter` on paths a user types: relative ones work, broken checkpoints get one clear line."""

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


def test_no_checkpoint_at_all(tmp_path):
  with pytest.raises(CheckpointError, match="no drafter checkpoint"):
    dsv4.load_drafter(tmp_path)
