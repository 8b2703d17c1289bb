"""Regenerated distillation data, on a tiny random target saved to disk: greedy rows equal a naive full-forward
argmax loop, prompts equal the source rows tokenised here, target_mask is exactly the response; chat, plain-text and
stdlib sources; disjoint train/validation prompts; the round trip through tokenize_dataset + PackedStream; bad input
failing before compute with nothing written; atomic saves; the script's JSON line."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from flax import nnx

from dsv4.data import regenerate as regen
from dsv4.data.corpus import build_corpus, load_corpus, split_of
from dsv4.data.regenerate import Sampler, regenerate
from dsv4.data.sources import render_chat
from dsv4.data.stream import PackedStream, tokenize_dataset
from dsv4.data.tokenizer import train_bpe
from dsv4.errors import DataError, TargetError
from dsv4.io.checkpoint import CONFIG_FILE
from dsv4.io.hf import save_pretrained
from dsv4.model import ModelConfig, Transformer
from tests import script_main
from tests.inference.spec_fixtures import built
from tests.reference_decode import full_forward_greedy

# One compressed-attention layer: these tests are about the data, and every compile counts on a shared CPU.
TINY = ModelConfig(vocab_size=320, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                   q_lora_rank=16, qk_rope_head_dim=8, o_groups=2, o_lora_rank=8, sliding_window=8,
                   compress_ratios=(4,), index_n_heads=2, index_head_dim=8, index_topk=4, n_routed_experts=4,
                   num_experts_per_tok=2, moe_intermediate_size=16, num_hash_layers=0, hc_mult=2,
                   num_nextn_predict_layers=0, max_position_embeddings=64)
T_NAIVE = 48  # fixed width of the reference forward (one compile)
PROMPT, NEW = 6, 6
GREEDY = Sampler(max_new_tokens=NEW, temperature=0.0, batch_size=2)
CODE = [f"def f{i}(x, y):\n    return x * {i} + y - {i * i}  # {'ab' * (i % 7)}\n" for i in range(40)]
TEXT_ROWS = CODE[:6] + ["", "x=1"]  # an empty row (skipped) and one shorter than PROMPT tokens (used whole)
QUESTIONS = [f"what does f{i} return for x={i}?" for i in range(8)]


def quiet(_msg):
  pass


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
  """(directory, in-memory model, tokenizer): a random tiny target whose EOS is reachable greedily, saved in the
  transformers layout (as assets/targets/small is). Most tests pass the in-memory model to skip reloading it."""
  tok = train_bpe(CODE + QUESTIONS, vocab_size=300)
  model = built(lambda: Transformer(TINY, rngs=nnx.Rngs(0)))
  eos = tok.token_to_id("<|eos|>")
  # Point EOS's head column along the token greedy picks 3rd after CODE[0]'s prompt (a positive logit there), so
  # that prompt stops at EOS within 3 tokens: the EOS path is exercised, not left to chance.
  prompt = tok.encode(CODE[0]).ids[:PROMPT]
  x = full_forward_greedy(model, prompt, 3, eos, T_NAIVE)[-1]
  w_DV = model.lm_head[...]
  model.lm_head[...] = w_DV.at[:, eos].set(3.0 * w_DV[:, x])
  assert full_forward_greedy(model, prompt, 3, eos, T_NAIVE)[-1] == eos
  path = tmp_path_factory.mktemp("regen") / "target"
  save_pretrained(model, path)
  tok.save(str(path / "tokenizer.json"))
  return path, model, tok


@pytest.fixture(scope="module")
def text_run(target, tmp_path_factory):
  """Greedy regeneration of the train split of a plain-text jsonl (an unsplit source, so partitioned)."""
  path, _, _ = target
  tmp = tmp_path_factory.mktemp("text")
  src = write_jsonl(tmp / "code.jsonl", [{"text": t} for t in TEXT_ROWS])
  out = tmp / "out"
  manifest = regenerate(path, out, split="train", prompts=src, num_prompts=10, prompt_tokens=PROMPT,
                        sampler=GREEDY, log=quiet)
  return out, manifest


def check_rows(ds, want_prompts, model, eos):
  """Every row is want_prompts[source_row] + the naive greedy response, mask 1 exactly on the response."""
  assert len(ds) == len(want_prompts)
  for row in ds:
    prompt = want_prompts[row["source_row"]]
    response = full_forward_greedy(model, prompt, NEW, eos, T_NAIVE)
    assert row["ids"] == prompt + response
    assert row["target_mask"] == [0] * len(prompt) + [1] * len(response)


def test_greedy_text_rows_equal_naive_forward(target, text_run):
  """Plain-text prompts = the first PROMPT tokens of each train-partition row (the whole row if shorter; the empty
  row skipped); responses = the full-forward argmax loop, with EOS kept; 3 batches of 2, the last one padded."""
  import datasets
  _, model, tok = target
  out, manifest = text_run
  eos = tok.token_to_id("<|eos|>")
  want = {i: tok.encode(t).ids[:PROMPT] for i, t in enumerate(TEXT_ROWS) if t and split_of(t) == "train"}
  assert len(want) >= 5 and any(len(p) < PROMPT for p in want.values())
  ds = datasets.load_from_disk(str(out))["train"]
  check_rows(ds, want, model, eos)
  assert sorted(ds["source_row"]) == sorted(want)
  responses = [r["ids"][r["target_mask"].index(1):] for r in ds]
  assert any(r[-1] == eos and len(r) < NEW for r in responses)
  assert manifest["rows"] == len(want) and manifest["rows_ending_in_eos"] == sum(r[-1] == eos for r in responses)
  assert manifest["response_tokens"] == sum(map(len, responses))
  assert manifest["prompts"]["skipped_empty"] == 1 and manifest["target"]["eos_id"] == eos
  assert json.loads((out / "train" / "manifest.json").read_text()) == manifest


def test_chat_prompts_are_the_turns_before_the_reply(target, tmp_path):
  """Chat rows: the rendered turns before the last assistant reply + the assistant header, written out by hand
  here; a row with only an assistant turn has no prompt and is skipped."""
  import datasets
  path, model, tok = target
  rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": "ab"}] for q in QUESTIONS[:4]]
  rows += [[{"role": "system", "content": "be brief"}, {"role": "user", "content": QUESTIONS[4]}],
           [{"role": "assistant", "content": "orphan"}]]
  src = write_jsonl(tmp_path / "chat.jsonl", [{"messages": m} for m in rows])
  regenerate(path, tmp_path / "out", split="train", prompts=src, num_prompts=8, sampler=GREEDY, model=model,
             log=quiet)
  by_hand = [f"<|user|>\n{q}\n<|assistant|>\n" for q in QUESTIONS[:4]]
  by_hand += [f"<|system|>\nbe brief\n<|user|>\n{QUESTIONS[4]}\n<|assistant|>\n"]
  want = {i: tok.encode(t).ids for i, t in enumerate(by_hand) if split_of(render_chat(rows[i])[0]) == "train"}
  assert len(want) >= 4
  check_rows(datasets.load_from_disk(str(tmp_path / "out"))["train"], want, model, tok.token_to_id("<|eos|>"))


def test_round_trip_through_the_training_pipeline(text_run):
  """tokenize_dataset passes the regenerated ids through untouched (no tokenizer needed) and PackedStream's
  target_mask is 1 exactly on response tokens."""
  import datasets
  out, _ = text_run
  ds = datasets.load_from_disk(str(out))["train"]
  docs = tokenize_dataset(ds, tokenizer=None)
  assert docs.column_names == ["ids", "target_mask"]
  assert docs["ids"] == ds["ids"] and docs["target_mask"] == ds["target_mask"]
  stream = PackedStream(docs, seq_len=16, batch_size=2, shuffle=False, repeat=False)
  tokens, mask = [], []
  for batch in stream:
    real = batch["segment_ids"] > 0
    tokens += batch["tokens"][real].tolist()
    mask += batch["target_mask"][real].tolist()
  assert tokens == sum(ds["ids"], []) and mask == sum(ds["target_mask"], [])


def test_tokenize_dataset_pass_through_checks_the_ids_column():
  import datasets
  ds = datasets.Dataset.from_dict({"ids": [[5, 6, 7], [8]], "note": ["a", "b"]})
  out = tokenize_dataset(ds, tokenizer=None)
  assert out.column_names == ["ids"] and out["ids"] == [[5, 6, 7], [8]]
  with pytest.raises(DataError, match="column 'ids' must hold lists of integer token ids"):
    tokenize_dataset(datasets.Dataset.from_dict({"ids": ["not", "ids"]}), tokenizer=None)


@pytest.fixture(scope="module")
def fake_stdlib_corpus(tmp_path_factory):
  """A corpus built by build_corpus from a made-up stdlib root, with at least 2 modules in every split."""
  root = tmp_path_factory.mktemp("stdlib")
  names, count = [], {"train": 0, "validation": 0, "test": 0}
  i = 0
  while min(count.values()) < 2:
    name = f"mod{i}"
    count[split_of(name)] += 1
    (root / f"{name}.py").write_text(CODE[i % len(CODE)] + f"VALUE = {i}\n")
    names.append(name)
    i += 1
  out = tmp_path_factory.mktemp("corpus") / "corpus"
  build_corpus(out, vocab_size=300, stdlib_root=root, log=quiet)
  return out


def test_stdlib_splits_sampling_and_reproducibility(target, fake_stdlib_corpus, tmp_path):
  """Train and validation prompts come from their own corpus split into one DatasetDict; sampling at temperature 1
  is reproducible from the seed and changes with it."""
  import datasets
  path, model, tok = target
  dd, _, _ = load_corpus(fake_stdlib_corpus)
  out = tmp_path / "out"
  sampler = Sampler(max_new_tokens=NEW, temperature=1.0, top_p=0.9, seed=3, batch_size=2)
  kw = dict(prompts="stdlib", corpus_dir=str(fake_stdlib_corpus), num_prompts=2, prompt_tokens=PROMPT, model=model,
            log=quiet)
  for split in ("train", "validation"):
    regenerate(path, out, split=split, sampler=sampler, **kw)
  assert json.loads((out / "dataset_dict.json").read_text()) == {"splits": ["train", "validation"]}
  got = datasets.load_from_disk(str(out))
  for split in ("train", "validation"):
    for row in got[split]:
      prompt = tok.encode(dd[split][row["source_row"]]["text"]).ids[:PROMPT]
      n = len(prompt)
      assert row["ids"][:n] == prompt and row["target_mask"] == [0] * n + [1] * (len(row["ids"]) - n)
      assert len(row["ids"]) > n and max(row["ids"]) < TINY.vocab_size
  again = regenerate(path, out, split="validation", sampler=sampler, overwrite=True, **kw)
  assert datasets.load_from_disk(str(out / "validation"))["ids"] == got["validation"]["ids"]
  assert again["sampler"]["seed"] == 3
  other = dataclasses.replace(sampler, seed=4)
  regenerate(path, out, split="validation", sampler=other, overwrite=True, **kw)
  assert datasets.load_from_disk(str(out / "validation"))["ids"] != got["validation"]["ids"]


def test_unsplit_source_is_partitioned(target, tmp_path):
  """Train and validation prompts of one jsonl never share a row: each row goes where split_of(its text) says."""
  import datasets
  path, model, _ = target
  src = write_jsonl(tmp_path / "code.jsonl", [{"text": t} for t in CODE])
  out = tmp_path / "out"
  for split in ("train", "validation"):
    regenerate(path, out, split=split, prompts=src, num_prompts=2, prompt_tokens=PROMPT, sampler=GREEDY, model=model,
               log=quiet)
  got = datasets.load_from_disk(str(out))
  for split in ("train", "validation"):
    assert all(split_of(CODE[i]) == split for i in got[split]["source_row"])
  assert not set(got["train"]["source_row"]) & set(got["validation"]["source_row"])


def test_streaming_source_is_read_in_order(target, monkeypatch):
  """A hub dataset streams: its prompts are its first usable rows, in order, with no partition."""
  _, _, tok = target
  rows = ["", *CODE[:4]]
  seen = {}

  class Stream:  # what load_prompts uses of a datasets.IterableDataset (a real one imports torch: seconds)
    column_names = None

    def iter(self, batch_size):
      for start in range(0, len(rows), batch_size):
        yield {"text": rows[start:start + batch_size]}

  def fake_hub(source, split, **kwargs):
    seen.update(source=source, split=split)
    return Stream()

  monkeypatch.setattr(regen, "load_documents", fake_hub)
  got = regen.load_prompts("someone/prompts", "validation", tok, num_prompts=3, prompt_tokens=PROMPT, log=quiet)
  assert seen == {"source": "someone/prompts", "split": "validation"}
  assert got.source_rows == [1, 2, 3] and got.ids == [tok.encode(t).ids[:PROMPT] for t in rows[1:4]]
  assert "partition" not in got.info and got.info["skipped_empty"] == 1


def test_target_formats_are_told_apart_by_their_config_file(target, tmp_path):
  path, _, _ = target
  assert regen.read_target_config(path) == (TINY, "transformers")
  (tmp_path / CONFIG_FILE).write_text(json.dumps(TINY.to_dict()))
  assert regen.read_target_config(tmp_path) == (TINY, "dsv4")
  with pytest.raises(TargetError, match="no config.json .* or dsv4_config.json"):
    regen.read_target_config(tmp_path / "..")


def listing(path):
  return sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) if path.exists() else None


def test_bad_input_fails_before_compute_and_writes_nothing(target, text_run, tmp_path, monkeypatch):
  path, _, _ = target
  out, _ = text_run
  before = listing(out)

  def no_compute(*_args, **_kwargs):
    raise AssertionError("the target was loaded: a check came too late")

  monkeypatch.setattr(regen, "load_target", no_compute)
  monkeypatch.setattr(regen, "sample_responses", no_compute)
  src = write_jsonl(tmp_path / "code.jsonl", [{"text": t} for t in CODE])
  chats = ([{"role": "user", "content": " ".join(CODE) + f"# {k}"}] for k in range(100))
  long_chat = write_jsonl(tmp_path / "chat.jsonl",
                          [{"messages": next(m for m in chats if split_of(render_chat(m)[0]) == "validation")}])
  long_row = next(t for k in range(100) if split_of(t := " ".join(CODE) + f"# {k}") == "validation")
  long_text = write_jsonl(tmp_path / "long.jsonl", [{"text": long_row}])
  empty = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}] * 3)
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "notes.txt").write_text("mine")
  cases = [
    (dict(prompts=str(tmp_path / "missing.jsonl")), "no such file or directory"),
    (dict(prompts=empty), "no usable prompts"),
    (dict(prompts=long_text, prompt_tokens=60), r"row \d+: its prompt has 60 tokens; .*max_position_embeddings \(64\)"),
    (dict(prompts=long_chat), r"prompt source row 0: its prompt has \d+ tokens.*max_position_embeddings \(64\)"),
    (dict(prompts=src, sampler=Sampler(top_p=0.0)), "top_p must be in"),
    (dict(prompts=src, num_prompts=0), "num_prompts must be a positive int"),
    (dict(prompts=src, split="dev"), "split 'dev' is none of them"),
  ]
  for kwargs, message in cases:
    args = dict(split="validation", num_prompts=2, prompt_tokens=PROMPT, sampler=GREEDY, log=quiet) | kwargs
    with pytest.raises(DataError, match=message):
      regenerate(path, out, **args)
  with pytest.raises(DataError, match="already holds split 'train'; pass overwrite=True"):
    regenerate(path, out, split="train", prompts=src, sampler=GREEDY, log=quiet)
  with pytest.raises(DataError, match="holds no regenerated dataset"):
    regenerate(path, foreign, prompts=src, sampler=GREEDY, log=quiet)
  with pytest.raises(TargetError, match="no such directory"):
    regenerate(tmp_path / "no_target", tmp_path / "o2", prompts=src, sampler=GREEDY, log=quiet)
  assert listing(out) == before
  assert listing(foreign) == ["notes.txt"] and not (tmp_path / "o2").exists()


def test_interrupted_save_keeps_the_old_split(tmp_path, monkeypatch):
  """A save that dies half-way leaves the previous split as it was and no temporary directory behind."""
  import datasets
  ds = regen.rows_dataset([[1, 2]], [[3]], [0])
  regen.save_split(ds, tmp_path / "out", "train", {"kind": "old"})
  before = listing(tmp_path / "out")

  def dies(self, path, **_kwargs):
    with open(os.path.join(path, "partial.arrow"), "w") as f:
      f.write("x")
    raise OSError("disk full")

  monkeypatch.setattr(datasets.Dataset, "save_to_disk", dies)
  with pytest.raises(OSError, match="disk full"):
    regen.save_split(regen.rows_dataset([[4]], [[5, 6]], [1]), tmp_path / "out", "train", {"kind": "new"},
                     overwrite=True)
  assert listing(tmp_path / "out") == before
  assert json.loads((tmp_path / "out" / "train" / "manifest.json").read_text()) == {"kind": "old"}
  monkeypatch.undo()
  regen.save_split(regen.rows_dataset([[4]], [[5, 6]], [1]), tmp_path / "out", "train", {"kind": "new"},
                   overwrite=True)
  assert datasets.load_from_disk(str(tmp_path / "out"))["train"]["ids"] == [[4, 5, 6]]
  assert listing(tmp_path / "out") == before


def test_script_prints_one_json_line(target, tmp_path, capsys, monkeypatch):
  path, _, _ = target
  script = script_main.load("regenerate")
  src = write_jsonl(tmp_path / "code.jsonl", [{"text": t} for t in CODE])
  argv = ["--target", str(path), "--prompts", src, "--split", "train", "--num_prompts", "3", "--prompt_tokens",
          str(PROMPT), "--max_new_tokens", str(NEW), "--temperature", "0", "--batch_size", "2", "--no_progress",
          "--out", str(tmp_path / "out")]
  script_main.run_main(script, argv, monkeypatch)
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(line) == {"out", "split", "path", "rows", "response_tokens", "seconds"}
  assert line["rows"] == 3 and line["path"] == str(tmp_path / "out" / "train")
  manifest = json.loads((tmp_path / "out" / "train" / "manifest.json").read_text())
  assert manifest["command"] == " ".join(["python", str(script_main.SCRIPTS / "regenerate.py"), *map(str, argv)])
  with pytest.raises(SystemExit) as exit_info:
    script_main.run_main(script, argv, monkeypatch)
  error = str(exit_info.value.code)
  assert error.startswith("error: ") and "already holds split 'train'" in error


def test_ctrl_c_keeps_the_finished_batches_and_the_rerun_resumes_after_them(target, tmp_path, capsys, monkeypatch):
  import signal

  import datasets
  path, _, _ = target
  script = script_main.load("regenerate")
  src = write_jsonl(tmp_path / "code.jsonl", [{"text": t} for t in CODE])
  argv = lambda out: ["--target", str(path), "--prompts", src, "--split", "train", "--num_prompts", "6",  # noqa: E731
                      "--prompt_tokens", str(PROMPT), "--max_new_tokens", str(NEW), "--temperature", "1.0",
                      "--batch_size", "2", "--no_progress", "--out", str(out)]
  script_main.run_main(script, argv(tmp_path / "straight"), monkeypatch)
  seed = regen.batch_seed
  ran, interrupt = [], [True]

  def interrupted_at_batch_2(s, b):
    ran.append(b)
    if b == 2 and interrupt[0]:
      signal.raise_signal(signal.SIGINT)  # as Ctrl-C during the third batch
    return seed(s, b)

  monkeypatch.setattr(regen, "batch_seed", interrupted_at_batch_2)
  capsys.readouterr()
  with pytest.raises(SystemExit) as info:
    script_main.run_main(script, argv(tmp_path / "out"), monkeypatch)
  err = capsys.readouterr().err
  assert info.value.code == 130 and "Traceback" not in err
  assert "the responses of 4 of 6 prompts are kept" in err and "re-run the same command to resume" in err
  assert not (tmp_path / "out" / "train").exists() and regen.partial_path(tmp_path / "out", "train").is_file()

  ran.clear()
  interrupt[0] = False
  script_main.run_main(script, argv(tmp_path / "out"), monkeypatch)
  assert ran == [2] and "resuming: 4 of 6 responses kept" in capsys.readouterr().err  # batches 0 and 1 not rerun
  a, b = (datasets.load_from_disk(str(tmp_path / d))["train"] for d in ("straight", "out"))
  assert a["ids"] == b["ids"] and a["target_mask"] == b["target_mask"]
  assert not regen.partial_path(tmp_path / "out", "train").exists()
