"""`scripts/demo.py` as a user meets it: --help prints help (it used to run the demo) and piped output is plain."""

import importlib.util
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[1] / "scripts" / "demo.py"


def test_help_prints_usage_without_running():
  done = subprocess.run([sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("`make demo`: the committed `small` V4-style target") and "target:" not in done.stdout


def test_piped_output_has_no_escape_codes(monkeypatch):
  spec = importlib.util.spec_from_file_location("demo", DEMO)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
  assert "\033" not in demo.bold("x")
  monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
  assert demo.bold("x") == "\033[1mx\033[0m"


def test_smollm2_stage_skips_without_the_committed_drafter(monkeypatch, tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("demo", DEMO)
  demo = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo)
  monkeypatch.setattr(demo, "SMOLLM2_DRAFTER", tmp_path / "smollm2-dspark")
  assert demo.smollm2_stage() is None
  out = capsys.readouterr().out.strip().splitlines()
  assert len(out) == 1 and out[0].startswith("SmolLM2 stage skipped: no committed drafter at ")
  assert str(tmp_path / "smollm2-dspark") in out[0]
