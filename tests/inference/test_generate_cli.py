"""scripts/generate.py end to end: text prompts through a tokenizer, a JSON last line, clean errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

ROOT = Path(__file__).resolve().parents[2]


def run(*args):
  return subprocess.run([sys.executable, str(ROOT / "scripts/generate.py"), *map(str, args)], capture_output=True,
                        text=True, cwd=ROOT, timeout=600)


@pytest.mark.slow  # several CLI subprocesses, each compiling
def test_text_prompts_and_errors(tmp_path):
  vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + [f"w{i}" for i in range(510)])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "tokenizer.json"))
  out = run("--config", "configs/target/tiny.py", "--tokenizer", tmp_path / "tokenizer.json", "--prompt", "w1 w2 w3",
            "--prompt", "w4", "--max_new_tokens", "4", "--temperature", "0.9", "--top_p", "0.9")
  assert out.returncode == 0, out.stderr
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert [len(o) for o in result["outputs"]] == [4, 4]
  assert all(isinstance(t, str) for t in result["texts"])
  bad = run("--config", "configs/target/tiny.py", "--prompt_ids", "5,6,700")
  assert bad.returncode == 1 and "outside the vocabulary" in bad.stderr and "Traceback" not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1].startswith("error: "), bad.stderr
  missing = run("--config", "configs/target/tiny.py", "--prompt", "w1")
  assert missing.returncode == 1 and "error: --prompt needs a tokenizer" in missing.stderr


@pytest.mark.parametrize("source", [("--model", "no/such/dir"), ("--model", "{tmp}"), ("--checkpoint", "no/such/dir"),
                                    ("--checkpoint", "{tmp}")])
def test_a_missing_model_is_named_before_any_tokenizer_question(source, tmp_path):
  flag, where = source[0], source[1].format(tmp=tmp_path)  # {tmp}: a directory that holds no model
  out = run(flag, where, "--prompt", "x")
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
  error = out.stderr.strip().splitlines()[-1]
  assert error.startswith("error: ") and where in error and "model" in error and "tokenizer" not in error, error
