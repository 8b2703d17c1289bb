"""Configs name shipped assets so that they are found from any working directory, not only the repository root."""

import os
from pathlib import Path

import pytest

from dsv4.configs import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("spec,field", [("configs/drafter/dspark.py:small", "target.path"),
                                        ("configs/drafter/dspark_small.py", "target.path"),
                                        ("configs/eval/small.py", "target")])
def test_shipped_assets_resolve_from_another_folder(spec, field, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # an empty folder: a cwd-relative "assets/..." would not exist here
  config = load_config(str(ROOT / spec))
  value = config
  for key in field.split("."):
    value = value[key]
  assert Path(value).is_dir(), f"{spec}: {field} = {value!r} is not a directory from {os.getcwd()}"
  if field == "target":
    assert all(Path(path).is_dir() for _, path in config.drafters)
