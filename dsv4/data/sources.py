"""Text and chat documents from local files or the Hugging Face hub, all through `datasets`.

One entry point, `load_documents`, turns a source string into a `datasets.Dataset` (local files, map-style) or a
`datasets.IterableDataset` (hub names, streaming by default). Local sources are a single file, a directory of files of
one type (top level only), or a directory written by `save_to_disk`. `documents_text` then yields one string per row;
chat rows (a `messages` list of {"role", "content"}) are rendered with `render_chat`, whose character spans mark the
assistant replies so a later stage can restrict the loss to response tokens.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dsv4.errors import DataError

if TYPE_CHECKING:
  import datasets

# File extension -> `datasets` packaged builder. `.json` may hold JSON lines or one JSON array.
BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".arrow": "arrow"}
CHAT_FIELD = "messages"
# `name` or `owner/name`, as the hub spells dataset ids.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _looks_like_hub_name(source: str) -> bool:
  if source.startswith(("./", "../", "/", "~")) or "\\" in source:
    return False
  if any(source.endswith(ext) for ext in BUILDERS):
    return False
  return bool(_HUB_NAME.match(source))


def _builder_for_files(files: list[Path], where: Path) -> str:
  kinds = {BUILDERS[f.suffix] for f in files}
  if len(kinds) > 1:
    found = ", ".join(sorted({f.suffix for f in files}))
    raise DataError(f"{where}: files of several types ({found}); keep one type per directory "
                    "(e.g. all .jsonl or all .parquet)")
  return kinds.pop()


def _local_files(path: Path) -> list[Path]:
  if path.is_file():
    if path.suffix not in BUILDERS:
      raise DataError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(BUILDERS)}")
    return [path]
  files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix in BUILDERS)
  if not files:
    raise DataError(f"{path}: directory has no {'/'.join(e[1:] for e in BUILDERS)} files and no save_to_disk "
                    "metadata (dataset_dict.json or state.json)")
  return files


def _load_from_disk(path: Path, split: str) -> datasets.Dataset:
  import datasets
  if (path / "dataset_dict.json").exists():
    splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
    if split not in splits:
      raise DataError(f"{path}: no split {split!r}; available splits: {', '.join(sorted(splits))}")
    path = path / split
  # An empty dataset is saved with no Arrow shards, which load_from_disk itself cannot read back.
  if not json.loads((path / "state.json").read_text()).get("_data_files", [None]):
    raise DataError(f"{path}: empty dataset (0 rows)")
  return datasets.load_from_disk(str(path))


def _check_columns(ds, text_field: str, where: str) -> None:
  columns = ds.column_names
  if columns is None:  # some streaming hub datasets only know their columns after the first row
    return
  if text_field in columns or (text_field == "text" and CHAT_FIELD in columns) or "ids" in columns:
    return  # "ids": already tokenised (regenerated responses), used as is by tokenize_dataset
  raise DataError(f"{where}: no column {text_field!r}; available columns: {', '.join(columns)}. "
                  "Pass text_field=<one of them>.")


def check_source(source: str, where: str = "") -> None:
  """A local source that is not there, and cannot be a hub dataset name either, fails here: before a tokenizer, a
  model or any other data is looked at. `where` names the field it came from."""
  if not Path(source).expanduser().exists() and not _looks_like_hub_name(source):
    raise DataError(f"{where + ': ' if where else ''}{source}: no such file or directory (not a hub dataset name "
                    "either); check the path")


# One TCP connect to the hub, instead of `huggingface_hub`'s five retries with back-off (~25 s) and a traceback.
_PROBE_SECONDS = 3.0


def _hub_unreachable(source: str, why: str) -> DataError:
  return DataError(f"{source}: not a local path, and it cannot be loaded as a hub dataset: {why}. Download it where "
                   "there is network (`datasets.load_dataset(NAME)` then `.save_to_disk(DIR)`) and give DIR instead; "
                   "if this machine's datasets cache already holds it, set HF_HUB_OFFLINE=1 to read it from there.")


def _hub_out_of_reach() -> str | None:
  """Why the hub `datasets` would call cannot be reached from here, or None. Skipped behind a proxy, where the
  proxy resolves and connects."""
  import datasets
  if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
    return None
  url = urllib.parse.urlsplit(datasets.config.HF_ENDPOINT)
  host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
  try:
    socket.create_connection((host, port), timeout=_PROBE_SECONDS).close()
  except socket.gaierror:
    return f"the hub ({host}) does not resolve from here (no network?)"
  except OSError as e:
    return f"the hub ({host}:{port}) does not answer from here ({e.strerror or type(e).__name__})"
  return None


def _load_hub(source: str, split: str, streaming: bool, cache_dir: str | None):
  """A hub dataset through `datasets`. Offline mode (HF_HUB_OFFLINE, read by `datasets` when imported) reads the
  datasets cache and never touches the network; otherwise the hub must answer one connect first."""
  import datasets
  offline = datasets.config.HF_HUB_OFFLINE
  if not offline and (why := _hub_out_of_reach()):
    raise _hub_unreachable(source, why)
  try:
    return datasets.load_dataset(source, split=split, streaming=streaming, cache_dir=cache_dir)
  except ConnectionError:
    if offline:
      where = cache_dir or datasets.config.HF_DATASETS_CACHE
      raise DataError(f"{source}: not a local path, and not in the datasets cache ({where}), which is all offline "
                      "mode (HF_HUB_OFFLINE) reads. Download it where there is network (`datasets.load_dataset(NAME)` "
                      "then `.save_to_disk(DIR)`) and give DIR instead.") from None
    raise _hub_unreachable(source, "the hub did not answer") from None
  except FileNotFoundError as e:  # datasets' DatasetNotFoundError: no such dataset, or a private one
    raise DataError(f"{source}: not a local path, nor a dataset on the Hugging Face hub ({str(e).splitlines()[0]}); "
                    "check the name or the path") from None


def load_documents(source: str, split: str = "train", *, text_field: str = "text", streaming: bool | None = None,
                   cache_dir: str | None = None) -> datasets.Dataset | datasets.IterableDataset:
  """Dataset of documents from a local path or a hub dataset name.

  Local sources load map-style (`streaming=True` turns them into an IterableDataset); the `split` argument only
  selects a split of a saved DatasetDict, a plain file or directory is the whole data. Hub names stream unless
  `streaming=False`. With the default `text_field="text"`, a dataset with a `messages` column instead is accepted as
  chat. `cache_dir` is where `datasets` writes its Arrow cache of local files (its default cache if None).
  """
  import datasets
  check_source(source)
  path = Path(source).expanduser()
  if not path.exists():
    ds = _load_hub(source, split, True if streaming is None else streaming, cache_dir)
    _check_columns(ds, text_field, source)
    return ds

  if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
    ds = _load_from_disk(path, split)
  else:
    files = _local_files(path)
    builder = _builder_for_files(files, path)
    if all(f.stat().st_size == 0 for f in files):
      raise DataError(f"{path}: empty dataset (all files are empty)")
    ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", cache_dir=cache_dir)
  if len(ds) == 0:
    raise DataError(f"{path}: empty dataset (0 rows)")
  _check_columns(ds, text_field, str(path))
  return ds.to_iterable_dataset() if streaming else ds


def render_chat(messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
  """Plain chat template: every turn is `<|{role}|>\\n{content}\\n`, e.g. `<|user|>\\nhi\\n<|assistant|>\\nhello\\n`.

  Returns the text and the [start, end) character spans of every assistant `content` (the template markers and
  the closing newline are not part of a span), for response-only loss masks.
  """
  if not isinstance(messages, list):
    raise DataError(f"chat messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
  parts: list[str] = []
  spans: list[tuple[int, int]] = []
  length = 0
  for i, message in enumerate(messages):
    if not isinstance(message, dict) or not isinstance(message.get("role"), str) or \
        not isinstance(message.get("content"), str):
      raise DataError(f"chat message {i} must be a dict with string 'role' and 'content', got {message!r}")
    header = f"<|{message['role']}|>\n"
    start = length + len(header)
    end = start + len(message["content"])
    if message["role"] == "assistant":
      spans.append((start, end))
    parts += [header, message["content"], "\n"]
    length = end + 1
  return "".join(parts), spans


def text_column(ds, text_field: str = "text") -> str:
  """The column `documents_text` reads: `text_field`, or `messages` for a chat dataset under the default name."""
  columns = ds.column_names
  if columns is not None and text_field not in columns and text_field == "text" and CHAT_FIELD in columns:
    return CHAT_FIELD
  return text_field


def row_text(value) -> tuple[str, list[tuple[int, int]] | None]:
  """(text, assistant spans) of one column value: a string as is (spans None), a message list via `render_chat`."""
  if isinstance(value, str):
    return value, None
  return render_chat(value)


def documents_text(ds, text_field: str = "text", *, batch_size: int = 1000) -> Iterator[str]:
  """The text of every row in order; chat rows are rendered with `render_chat`. Works on map-style and streaming."""
  _check_columns(ds, text_field, "dataset")
  column = text_column(ds, text_field)
  for batch in ds.iter(batch_size=batch_size):
    if column not in batch:
      raise DataError(f"dataset: no column {column!r}; available columns: {', '.join(batch)}")
    for value in batch[column]:
      yield row_text(value)[0]
