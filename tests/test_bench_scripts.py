"""scripts/bench_decode.py end to end on tiny: the harness's table and JSON (every figure a median with its spread,
or a refusal with its reason), and dsv4's greedy tokens equal transformers' on the same weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPREAD = {"median", "min", "max", "q1", "q3", "n"}


@pytest.mark.slow  # compiles the tiny target and runs transformers' generate 12 times
def test_bench_decode_reports_spread_or_refusal(tmp_path):
  out = subprocess.run([sys.executable, "scripts/bench_decode.py", "--config", "configs/target/tiny.py",
                        "--prompt_len", "8", "--new_tokens", "4", "--repeats", "5", "--allow_load", "--out",
                        str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["greedy_tokens_matching"] == "4/4"
  for key in ("prefill", "generate", "decode"):
    ratio = result[f"{key}_speedup_vs_transformers"]
    assert set(ratio) in (SPREAD, {"refused"}), (key, ratio)
    if "refused" not in ratio:
      assert ratio["n"] == 5 and ratio["min"] <= ratio["q1"] <= ratio["q3"] <= ratio["max"]
  assert len(result["load_start"]) == 3 and result["threads"] >= 1
  text = (tmp_path / "results.md").read_text()
  assert "| measure | dsv4 | transformers | transformers / dsv4 |" in text and "Load average" in text
