"""Prompt sets for evaluating speculative decoding: token-id prompts from jsonl files, Hugging Face datasets or the
held-out modules of the embedded corpus, checked before anything is computed.

A set is described by a ConfigDict (or dict) with
  name         label in tables, plots and TensorBoard tags
  kind         "jsonl" | "hf" | "corpus"
  path         jsonl file / dataset directory (`save_to_disk` output, or a local data file) / corpus directory
  field        the record field holding the prompt (jsonl, hf; default "turns": a list of user turns, or a string)
  split        dataset split (hf: default the only one or "test"; corpus: default "test", the held-out modules)
  max_prompts  cap on the prompts taken (a seeded sample when the source holds more)
  seed         the sample's seed
  max_prompt_tokens  prompts longer than this keep their last max_prompt_tokens tokens
Every set draws the same prompts for every drafter, block size and temperature of a run.

Rendering is a hook: `render(turns) -> token ids`. A tokenizer with a chat template renders the user turn through
it with the generation prompt: a GGUF model's tokenizer (`dsv4.io.gguf_tokenizer.GGUFTokenizer.chat_ids`, the
template the file carries, so SmolLM2's default system turn is included) or a transformers tokenizer
(`apply_chat_template`); the project's BPE (`tokenizers.Tokenizer`, what the small target was trained with) encodes
the text. Only the first turn is used: later turns of a multi-turn record follow an
answer of the model's own, which an acceptance measurement does not have.

Corpus prompts are code completions cut at function bodies: the module up to and including a `def ...:` header and
its docstring (if any), so the model continues with the body. Cut points come from `ast`, modules that do not parse
are skipped, one-line functions (body on the header's line) are not cut, and with max_prompt_tokens only cuts with at
least that many tokens before them are taken, so every prompt has the same length (one compiled shape).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsv4.errors import DataError

KINDS = ("jsonl", "hf", "corpus")


@dataclass(frozen=True)
class PromptSet:
  """Token-id prompts of one set and where they came from (`sources[i]` names prompt i's record)."""
  name: str
  prompts: list[list[int]]
  sources: list[str]


def _get(spec, key, default=None):
  return spec.get(key, default) if isinstance(spec, Mapping) else getattr(spec, key, default)


def set_spec(spec) -> dict:
  """The set's fields with defaults, refusing an unknown kind or a missing path (no data is read)."""
  d = {k: _get(spec, k) for k in ("name", "kind", "path", "field", "split", "max_prompts", "seed",
                                  "max_prompt_tokens")}
  if d["kind"] not in KINDS:
    raise DataError(f"prompt set {d['name']!r}: kind must be one of {KINDS}, got {d['kind']!r}.")
  if not d["path"] or not Path(d["path"]).exists():
    hint = "" if d["kind"] != "hf" else (
        " Hugging Face hub names need the network, which evaluation does not use: load it once with "
        "`datasets.load_dataset(...)` and `save_to_disk` it, then give that directory.")
    raise DataError(f"prompt set {d['name']!r}: {d['kind']} path {d['path']!r} does not exist.{hint}")
  d["name"] = d["name"] or Path(d["path"]).stem
  d["field"] = d["field"] or "turns"
  d["seed"] = 0 if d["seed"] is None else int(d["seed"])
  for k in ("max_prompts", "max_prompt_tokens"):
    if d[k] is not None and (not isinstance(d[k], int) or d[k] < 1):
      raise DataError(f"prompt set {d['name']!r}: {k} must be a positive integer or None, got {d[k]!r}.")
  return d


# --- rendering -------------------------------------------------------------------------------------------------
def renderer(tokenizer, bos_id: int | None = None) -> Callable[[Sequence[str] | str], list[int]]:
  """turns → token ids: the chat template when `tokenizer` has one, else the text's encoding; `bos_id` first when
  given (the small target was trained on documents that start with BOS)."""
  template = getattr(tokenizer, "chat_template", None)

  def render(turns) -> list[int]:
    text = turns if isinstance(turns, str) else turns[0]
    if template and hasattr(tokenizer, "chat_ids"):  # GGUFTokenizer: the template writes its own special tokens
      ids = tokenizer.chat_ids([{"role": "user", "content": text}], add_generation_prompt=True)
    elif template:
      ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokenize=True)
      ids = list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
    elif hasattr(tokenizer, "encode") and hasattr(tokenizer.encode(""), "ids"):  # tokenizers.Tokenizer
      ids = tokenizer.encode(text).ids
    else:
      ids = tokenizer.encode(text, add_special_tokens=False)
    return ([bos_id] if bos_id is not None and (not ids or ids[0] != bos_id) else []) + list(ids)
  return render


def _turns(value, where: str):
  if isinstance(value, str) and value:
    return value
  if isinstance(value, list | tuple) and value and all(isinstance(t, str) for t in value):
    return list(value)
  raise DataError(f"{where}: wants a non-empty string or list of strings, got {type(value).__name__} "
                  f"{str(value)[:80]!r}.")


# --- sources ---------------------------------------------------------------------------------------------------
def _jsonl_records(path: Path, field: str) -> list:
  records = []
  with path.open() as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{path}:{i}: not JSON ({e.msg}); each line must be one object like "
                        '{"turns": ["..."]}.') from e
      if not isinstance(row, dict) or field not in row:
        have = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise DataError(f"{path}:{i}: no field {field!r} (the record has {have}); set the prompt set's `field`.")
      records.append(_turns(row[field], f"{path}:{i} field {field!r}"))
  if not records:
    raise DataError(f"{path}: no records.")
  return records


def _hf_records(path: Path, field: str, split: str | None) -> list:
  import datasets
  if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()):
    ds = datasets.load_from_disk(str(path))
  else:
    ds = datasets.load_dataset(str(path.parent if path.is_file() else path),
                               data_files=str(path) if path.is_file() else None)
  if isinstance(ds, datasets.DatasetDict):
    split = split or ("test" if "test" in ds else (next(iter(ds)) if len(ds) == 1 else None))
    if split not in ds:
      raise DataError(f"{path}: split {split!r} not found; it has {sorted(ds)}. Set the prompt set's `split`.")
    ds = ds[split]
  if field not in ds.column_names:
    raise DataError(f"{path}: no field {field!r}; its columns are {ds.column_names}. Set the prompt set's `field`.")
  return [_turns(v, f"{path} row {i} field {field!r}") for i, v in enumerate(ds[field])]


def function_cuts(source: str) -> list[int]:
  """Character offsets just after each multi-line function's header and docstring (the body's start line)."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  lines = source.splitlines(keepends=True)
  starts = np.cumsum([0] + [len(line) for line in lines])
  cuts = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.body:
      continue
    body = node.body
    has_doc = isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
        and isinstance(body[0].value.value, str)
    rest = body[1:] if has_doc else body
    header_end = body[0].end_lineno if has_doc else body[0].lineno - 1
    while not has_doc and header_end > node.lineno and (lines[header_end - 1].strip().startswith("#")
                                                         or not lines[header_end - 1].strip()):
      header_end -= 1  # comments before the first statement belong to the body
    if not rest or rest[0].lineno <= node.lineno or header_end >= len(starts) - 1:
      continue  # nothing after the docstring, or a one-line def
    cuts.append(int(starts[header_end]))
  return sorted(cuts)


def _corpus_prompts(path: Path, split: str, render_text, n: int | None, seed: int, min_tokens: int | None):
  from dsv4.data.corpus import load_corpus
  dd, _, _ = load_corpus(path)
  if split not in dd:
    raise DataError(f"corpus {path}: no split {split!r}; it has {sorted(dd)}.")
  rows = dd[split]
  cands = [(i, c) for i, text in enumerate(rows["text"]) for c in function_cuts(text)]
  prompts, sources = [], []
  for j in np.random.default_rng(seed).permutation(len(cands)):
    if n is not None and len(prompts) == n:
      break
    i, cut = cands[int(j)]
    ids = render_text(rows[i]["text"][:cut])
    if min_tokens is None or len(ids) >= min_tokens:  # equal lengths after the cap: one compiled shape
      prompts.append(ids)
      sources.append(f"{rows[i]['path']}@{cut}")
  if not prompts:
    raise DataError(f"corpus {path} split {split!r}: no function body to cut at"
                    + (f" with ≥ {min_tokens} tokens before it." if min_tokens else "."))
  return prompts, sources


def load_prompt_set(spec, render: Callable, render_text: Callable | None = None) -> PromptSet:
  """The set's prompts as token ids. `render(turns)` renders jsonl/hf records; `render_text(text)` the corpus
  prefixes (default: `render`, which treats a string as one turn)."""
  d = set_spec(spec)
  path = Path(d["path"])
  if d["kind"] == "corpus":
    prompts, sources = _corpus_prompts(path, d["split"] or "test", render_text or render, d["max_prompts"], d["seed"],
                                       d["max_prompt_tokens"])
  else:
    records = _jsonl_records(path, d["field"]) if d["kind"] == "jsonl" else _hf_records(path, d["field"], d["split"])
    idx = np.arange(len(records))
    if d["max_prompts"] is not None and d["max_prompts"] < len(records):
      idx = np.sort(np.random.default_rng(d["seed"]).permutation(len(records))[:d["max_prompts"]])
    prompts = [render(records[i]) for i in idx]
    sources = [f"{path.name}#{i}" for i in idx]
  if d["max_prompt_tokens"] is not None:
    prompts = [p[-d["max_prompt_tokens"]:] for p in prompts]
  return PromptSet(d["name"], prompts, sources)
