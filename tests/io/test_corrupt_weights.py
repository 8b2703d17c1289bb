"""A weights file with overwritten bytes is refused on load, naming the tensor and the file (it used to load and
generate token 0 forever)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dsv4
from dsv4.errors import CheckpointError

SMALL = Path(__file__).resolve().parents[2] / "assets" / "targets" / "small"


def _corrupt_copy(tmp_path) -> tuple[Path, str]:
  """A copy of the small target with 4 KB of 0xFF in the middle of its data, and the tensor hit."""
  out = tmp_path / "small"
  shutil.copytree(SMALL, out)
  path = out / "model.safetensors"
  raw = bytearray(path.read_bytes())
  header_len = int.from_bytes(raw[:8], "little")
  header = json.loads(raw[8:8 + header_len])
  middle = 8 + header_len + (len(raw) - 8 - header_len) // 2
  raw[middle:middle + 4096] = b"\xff" * 4096
  path.write_bytes(bytes(raw))
  rel = middle - 8 - header_len
  hit = next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][0] <= rel < v["data_offsets"][1])
  return out, hit


def test_overwritten_bytes_are_refused_naming_tensor_and_file(tmp_path):
  path, tensor = _corrupt_copy(tmp_path)
  with pytest.raises(CheckpointError, match="non-finite") as err:
    dsv4.from_pretrained(path)
  assert tensor in str(err.value) and "model.safetensors" in str(err.value)


def test_the_intact_copy_loads(tmp_path):
  out = tmp_path / "small"
  shutil.copytree(SMALL, out)
  model = dsv4.from_pretrained(out)
  assert np.isfinite(np.asarray(model.embed[...], np.float32)).all()


def test_generate_script_reports_it_in_one_line(tmp_path):
  path, tensor = _corrupt_copy(tmp_path)
  script = Path(__file__).resolve().parents[2] / "scripts" / "generate.py"
  done = subprocess.run([sys.executable, str(script), "--model", str(path), "--prompt", "def f(x):"],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode != 0
  assert tensor in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
