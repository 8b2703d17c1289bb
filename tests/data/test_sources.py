"""load_documents: every local layout yields the same texts in the same order; bad sources fail early and clearly."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import pytest  # noqa: E402

from dsv4.data import DataError, documents_text, load_documents, render_chat, sources  # noqa: E402

ROWS = [{"text": f"document {i}: " + "word " * (i % 7), "n": i} for i in range(50)]
TEXTS = [r["text"] for r in ROWS]


def _jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _load(source, tmp_path, **kw):
  return load_documents(str(source), cache_dir=str(tmp_path / "hf_cache"), **kw)


def test_every_local_layout_gives_the_same_texts(tmp_path):
  table = datasets.Dataset.from_list(ROWS)
  sources = {"jsonl": _jsonl(tmp_path / "docs.jsonl", ROWS)}
  table.to_parquet(str(tmp_path / "docs.parquet"))
  sources["parquet"] = tmp_path / "docs.parquet"
  (tmp_path / "txt").mkdir()
  (tmp_path / "txt" / "docs.txt").write_text("".join(t + "\n" for t in TEXTS))
  sources["txt"] = tmp_path / "txt" / "docs.txt"
  shards = tmp_path / "shards"
  shards.mkdir()
  _jsonl(shards / "part-00.jsonl", ROWS[:20])
  _jsonl(shards / "part-01.jsonl", ROWS[20:])
  (shards / "README.md").write_text("ignored: not a data file type")
  sources["shards"] = shards
  table.save_to_disk(str(tmp_path / "saved"))
  sources["save_to_disk"] = tmp_path / "saved"
  datasets.DatasetDict({"train": table, "test": table.select(range(3))}).save_to_disk(str(tmp_path / "saved_dict"))
  sources["save_to_disk_dict"] = tmp_path / "saved_dict"

  for name, source in sources.items():
    ds = _load(source, tmp_path)
    assert isinstance(ds, datasets.Dataset), name
    assert list(documents_text(ds, batch_size=16)) == TEXTS, name
  assert len(_load(tmp_path / "saved_dict", tmp_path, split="test")) == 3
  streamed = _load(sources["jsonl"], tmp_path, streaming=True)
  assert isinstance(streamed, datasets.IterableDataset)
  assert list(documents_text(streamed)) == TEXTS


def test_hub_names_stream_through_load_dataset(monkeypatch):
  calls = []
  fake = datasets.Dataset.from_list(ROWS[:2]).to_iterable_dataset()
  monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: calls.append((a, kw)) or fake)
  monkeypatch.setattr(sources, "_hub_out_of_reach", lambda: None)  # this machine has no network
  assert load_documents("someone/some-corpus") is fake
  assert calls[0][0] == ("someone/some-corpus",) and calls[0][1]["streaming"] is True
  load_documents("corpus", split="validation", streaming=False)
  assert calls[1][0] == ("corpus",) and calls[1][1]["split"] == "validation" and calls[1][1]["streaming"] is False


@pytest.fixture
def online(monkeypatch):
  """The settings of a user who is not in offline mode and has no proxy (the test module defaults to offline)."""
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
  for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    monkeypatch.delenv(v, raising=False)
  monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: pytest.fail("must not reach load_dataset"))


def _one_line_error(source: str, match: str) -> str:
  import time
  t0 = time.perf_counter()
  with pytest.raises(DataError, match=match) as e:
    load_documents(source)
  assert time.perf_counter() - t0 < 5 and len(str(e.value).splitlines()) == 1
  return str(e.value)


def test_hub_name_without_network_fails_at_once_with_advice(online, monkeypatch):
  """The hub's host does not resolve: one DataError naming the source and both ways out (a saved copy, or the
  datasets cache through offline mode), before `datasets` spends ~25 s retrying."""
  monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **kw: (_ for _ in ()).throw(socket.gaierror(-2, "unknown")))
  error = _one_line_error("someone/some-corpus", r"someone/some-corpus: not a local path.*save_to_disk")
  assert "does not resolve" in error and "HF_HUB_OFFLINE=1" in error, error


def test_a_hub_that_does_not_answer_fails_at_once(online, monkeypatch):
  """HF_ENDPOINT on a local port nobody listens on: the name resolves but the hub never answers. `datasets` would
  retry five times with back-off (~30 s of 'Retrying in 8s' lines); one connect says so instead."""
  monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
  monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")  # datasets read it when imported
  error = _one_line_error("someone/some-corpus", r"someone/some-corpus: not a local path.*save_to_disk")
  assert "(127.0.0.1:9) does not answer" in error and "HF_HUB_OFFLINE=1" in error, error


def _cache_as_the_hub_writes_it(cache, name, rows):
  """The datasets cache after `load_dataset(NAME)` on a machine with network: NAMESPACE___NAME/CONFIG/VERSION/HASH
  holding the prepared Arrow shard NAME-SPLIT.arrow and dataset_info.json, written here by datasets' own builder
  from a local copy of the rows."""
  built = datasets.load_dataset("json", data_files=[str(_jsonl(cache.parent / "rows.jsonl", rows))], split="train",
                                cache_dir=str(cache.parent / "build"))
  prepared = next(iter(built.cache_files))["filename"]
  namespace, dataset = name.split("/")
  dst = cache / f"{namespace}___{dataset}" / "default" / "0.0.0" / ("0" * 40)
  dst.mkdir(parents=True)
  (dst / f"{dataset}-train.arrow").write_bytes(open(prepared, "rb").read())
  (dst / "dataset_info.json").write_bytes((Path(prepared).parent / "dataset_info.json").read_bytes())


def test_offline_mode_reads_a_hub_dataset_from_the_datasets_cache(monkeypatch, tmp_path):
  """HF_HUB_OFFLINE is how a cached hub dataset loads with no network: it reaches `datasets`, which reads its cache
  without a connection; a name that is not cached is one line naming the cache."""
  _cache_as_the_hub_writes_it(tmp_path / "cache", "someone/some-corpus", ROWS[:5])
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
  monkeypatch.setattr(socket, "create_connection", lambda *a, **kw: pytest.fail("offline mode needs no connection"))
  for streaming in (True, False):
    ds = load_documents("someone/some-corpus", cache_dir=str(tmp_path / "cache"), streaming=streaming)
    assert list(documents_text(ds)) == TEXTS[:5]
  with pytest.raises(DataError, match=r"someone/other: not a local path, and not in the datasets cache .*cache") as e:
    load_documents("someone/other", cache_dir=str(tmp_path / "cache"))
  assert len(str(e.value).splitlines()) == 1


def test_hub_errors_become_one_line(monkeypatch):
  monkeypatch.setattr(sources, "_hub_out_of_reach", lambda: None)
  monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)

  def unreachable(*a, **kw):
    raise ConnectionError("Couldn't reach 'someone/some-corpus' on the Hub (LocalEntryNotFoundError)")
  monkeypatch.setattr(datasets, "load_dataset", unreachable)
  with pytest.raises(DataError, match="did not answer.*HF_HUB_OFFLINE"):
    load_documents("someone/some-corpus")

  def missing(*a, **kw):
    raise datasets.exceptions.DatasetNotFoundError("Dataset 'someone/nope' doesn't exist on the Hub")
  monkeypatch.setattr(datasets, "load_dataset", missing)
  with pytest.raises(DataError, match="nor a dataset on the Hugging Face hub .*doesn't exist"):
    load_documents("someone/nope")


@pytest.mark.parametrize("missing", ["./nope", "/no/such/dir", "~/no-such-file", "nope.jsonl", "a/b/c"])
def test_missing_path_is_not_sent_to_the_hub(missing, monkeypatch):
  monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: pytest.fail("must not reach load_dataset"))
  with pytest.raises(DataError, match="no such file or directory"):
    load_documents(missing)


def test_directory_errors(tmp_path):
  (tmp_path / "notes.md").write_text("x")
  with pytest.raises(DataError, match="no txt/json/jsonl/parquet/arrow files"):
    load_documents(str(tmp_path))
  _jsonl(tmp_path / "a.jsonl", ROWS[:2])
  (tmp_path / "b.txt").write_text("x\n")
  with pytest.raises(DataError, match="several types"):
    load_documents(str(tmp_path))


def test_unsupported_file_type(tmp_path):
  (tmp_path / "docs.csv").write_text("text\nx\n")
  with pytest.raises(DataError, match="unsupported file type '.csv'"):
    load_documents(str(tmp_path / "docs.csv"))


def test_empty_dataset(tmp_path):
  (tmp_path / "empty.jsonl").write_text("")
  with pytest.raises(DataError, match="empty dataset"):
    _load(tmp_path / "empty.jsonl", tmp_path)
  datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "saved"))
  with pytest.raises(DataError, match="empty dataset"):
    _load(tmp_path / "saved", tmp_path)


def test_missing_text_field_names_the_columns(tmp_path):
  path = _jsonl(tmp_path / "docs.jsonl", ROWS[:3])
  with pytest.raises(DataError, match=r"no column 'body'; available columns: text, n"):
    _load(path, tmp_path, text_field="body")


def test_missing_split_lists_the_splits(tmp_path):
  datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2])}).save_to_disk(str(tmp_path / "saved"))
  with pytest.raises(DataError, match="no split 'test'; available splits: train"):
    _load(tmp_path / "saved", tmp_path, split="test")


def test_render_chat_spans_cover_exactly_the_assistant_replies():
  messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "hello!"}, {"role": "user", "content": ""},
              {"role": "assistant", "content": "two\nlines"}]
  text, spans = render_chat(messages)
  assert text == "<|system|>\nbe brief\n<|user|>\nhi\n<|assistant|>\nhello!\n<|user|>\n\n<|assistant|>\ntwo\nlines\n"
  assert [text[a:b] for a, b in spans] == ["hello!", "two\nlines"]
  with pytest.raises(DataError, match="chat message 0"):
    render_chat([{"role": "user"}])


def test_chat_dataset_renders_messages(tmp_path):
  rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
          for i in range(4)]
  ds = _load(_jsonl(tmp_path / "chat.jsonl", rows), tmp_path)
  assert list(documents_text(ds)) == [render_chat(r["messages"])[0] for r in rows]
