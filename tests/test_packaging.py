"""`pip install` of the project reads pyproject.toml without setuptools deprecation warnings (a `project.license`
table, or license classifiers, each print a page of them); the license is an SPDX expression."""

import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parents[1]


def apply(pyproject: Path) -> tuple[Distribution, list[str]]:
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dist = apply_configuration(Distribution(), pyproject)
  return dist, [f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught]


def test_pyproject_applies_without_warnings(monkeypatch):
  monkeypatch.chdir(ROOT)  # the readme is read relative to the project
  dist, caught = apply(ROOT / "pyproject.toml")
  assert caught == []
  assert dist.metadata.license_expression == "Apache-2.0"


def test_a_license_table_would_warn(tmp_path, monkeypatch):
  """The check above can fail: the table form setuptools deprecated warns through the same call."""
  text = (ROOT / "pyproject.toml").read_text()
  assert 'license = "Apache-2.0"' in text
  (tmp_path / "pyproject.toml").write_text(text.replace('license = "Apache-2.0"', 'license = {text = "Apache-2.0"}'))
  (tmp_path / "README.md").write_text("x")
  monkeypatch.chdir(tmp_path)
  _, caught = apply(tmp_path / "pyproject.toml")
  assert any("project.license" in w for w in caught), caught
