"""scripts/bench_decode.py end to end on tiny targets (random V4 weights, and a random dense Llama saved by
transformers): the harness's table and JSON (every figure a median with its spread, or a refusal with its reason),
dsv4's greedy tokens equal transformers' on the same weights, and the verification-cost rows."""

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
  assert "Command: `python scripts/bench_decode.py --config configs/target/tiny.py --prompt_len 8 " in text, text


def tiny_llama_dir(path: Path) -> Path:
  """A random 2-layer Llama (GQA, tied head) saved by transformers; every parameter random (not the init's zeros
  and ones), so a wrong weight layout would change the greedy tokens."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  config = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    max_position_embeddings=64, tie_word_embeddings=True, bos_token_id=1,
                                    eos_token_id=2)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  g = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_((1.0 if name.endswith("norm.weight") else 0.0) + 0.15 * torch.randn(p.shape, generator=g))
  model.save_pretrained(path)
  return path


def test_bench_decode_dense_model_against_transformers(tmp_path):
  model = tiny_llama_dir(tmp_path / "llama")
  out = subprocess.run([sys.executable, "scripts/bench_decode.py", "--model", str(model), "--prompt_len", "8",
                        "--new_tokens", "4", "--verify_prefix", "12", "--repeats", "5", "--allow_load", "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["model"] == str(model) and result["weights"].endswith("(float32)")
  assert result["greedy_tokens_matching"] == "4/4"  # checked before timing; a mismatch refuses the run
  for key in ("prefill", "generate", "decode"):
    assert set(result[f"{key}_speedup_vs_transformers"]) in (SPREAD, {"refused"}), key
  assert result["verify_prefix"] == 12
  ns = ["1", "2", "4", "8", "16"]
  assert list(result["verify_cost_vs_one"]) == ns and list(result["ours_verify_ms"]) == ns
  for n in ns:
    cost, ms = result["verify_cost_vs_one"][n], result["ours_verify_ms"][n]
    assert set(ms) == SPREAD and ms["n"] == 5 and 0 < ms["min"] <= ms["median"] <= ms["max"], (n, ms)
    assert set(cost) == SPREAD and cost["min"] <= cost["q1"] <= cost["q3"] <= cost["max"], (n, cost)
  one = result["verify_cost_vs_one"]["1"]
  assert one["median"] == one["min"] == one["max"] == 1.0  # the baseline against itself
  assert set(result["goals"]) == {"dsv4_ar_at_least_as_fast_as_transformers", "verify_8_at_most_2x_one"}
  assert result["goals"]["verify_8_at_most_2x_one"] == (result["verify_cost_vs_one"]["8"]["median"] <= 2.0)
  text = (tmp_path / "out" / "results.md").read_text()
  assert "| tokens per extend | extend (ms) | per token (ms) | cost / one token |" in text
  assert "| measure | dsv4 | transformers | transformers / dsv4 |" in text and "Greedy tokens matching: 4/4" in text


def test_bench_decode_refuses_a_model_transformers_cannot_load(tmp_path):
  (tmp_path / "empty").mkdir()
  out = subprocess.run([sys.executable, "scripts/bench_decode.py", "--model", str(tmp_path / "empty")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert out.returncode == 1 and "error: --model" in out.stderr and "transformers directory" in out.stderr, out.stderr
