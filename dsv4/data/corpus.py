"""The embedded default corpus: the running interpreter's standard-library source, built with no network.

Every machine with Python has ~30 MB of real code under `sysconfig.get_paths()["stdlib"]`, so drafters can be
trained and evaluated end to end without downloading anything. Each `*.py` file (site-/dist-packages excluded) is
one row, keyed by its dotted module name (`email/mime/text.py` -> `email.mime.text`, `json/__init__.py` -> `json`).
A module's split is a pure function of its name (`split_of`), so held-out modules, later used as evaluation
prompts, are the same on every machine. A byte-level BPE is trained on the train split only.

On disk (`out_dir`): a `datasets.DatasetDict` (train/validation/test; columns text, module, path; rows sorted by
module), `tokenizer.json`, and `manifest.json`, written last. The whole directory is built beside `out_dir` and
moved into place with one `os.replace`, so a directory at `out_dir` with a manifest is always complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from dsv4.data.tokenizer import TOKENIZER_FILE, check_train_vocab_size, load_tokenizer, train_bpe
from dsv4.data.tokenizer import vocab_size as tokenizer_vocab_size
from dsv4.errors import DataError

DEFAULT_CORPUS_DIR = "data/stdlib_corpus"
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
SPLIT_RULE = ("int(sha256(module name as utf-8).hexdigest()[:8], 16) % 100: < 90 train, < 95 validation, "
              "else test")
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_FULL_BUILD_SECONDS = 30  # a full build took 17 s of wall time on 2 shared CPU cores, for the first-use message


def split_of(module: str) -> str:
  """The split a module belongs to; see SPLIT_RULE (stable across machines and Python versions)."""
  bucket = int(hashlib.sha256(module.encode("utf-8")).hexdigest()[:8], 16) % 100
  return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def module_name(rel_path: str) -> str:
  """Dotted module name of a path relative to the stdlib root ('json/__init__.py' -> 'json')."""
  parts = rel_path[:-len(".py")].split("/")
  if parts[-1] == "__init__" and len(parts) > 1:
    parts = parts[:-1]
  return ".".join(parts)


def stdlib_files(root: str | Path) -> list[str]:
  """Every *.py under root as a '/'-separated relative path, sorted; installed packages are not the stdlib."""
  root = Path(root)
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
    rel_dir = Path(dirpath).relative_to(root).as_posix()
    found += [f if rel_dir == "." else f"{rel_dir}/{f}" for f in filenames if f.endswith(".py")]
  return sorted(found)


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def split_hash(rows: Iterable[dict]) -> str:
  """sha256 over the sorted (path, sha256(utf-8 text)) pairs of a split, one 'path\\tsha\\n' line each."""
  h = hashlib.sha256()
  for path, digest in sorted((r["path"], _sha256(r["text"].encode("utf-8"))) for r in rows):
    h.update(f"{path}\t{digest}\n".encode())
  return h.hexdigest()


def total_hash(split_hashes: dict[str, str]) -> str:
  """sha256 over 'split\\thash\\n' for train, validation, test in that order."""
  return _sha256("".join(f"{s}\t{split_hashes[s]}\n" for s in SPLITS).encode())


def _read(root: Path, rels: list[str], progress: bool) -> tuple[list[dict], list[str]]:
  """(rows, undecodable paths); a file that is not UTF-8 (a few test fixtures are, on purpose) is skipped."""
  if progress:
    from tqdm import tqdm
    rels = tqdm(rels, desc="reading stdlib", unit="file", file=sys.stderr)
  rows, skipped = [], []
  for rel in rels:
    try:
      text = (root / rel).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
      skipped.append(rel)
      continue
    rows.append({"text": text, "module": module_name(rel), "path": rel})
  return rows, skipped


def _subset(by_split: dict[str, list[dict]], max_files: int) -> dict[str, list[dict]]:
  """About max_files rows in the 90/5/5 proportions, at least one per split, spread evenly over module names."""
  held = max(1, round(0.05 * max_files))
  quota = {"train": max(1, max_files - 2 * held), "validation": held, "test": held}
  out = {}
  for s, rows in by_split.items():
    n = min(quota[s], len(rows))
    out[s] = [rows[i * len(rows) // n] for i in range(n)]  # evenly spaced: not only the `_`-prefixed modules
  return out


def build_corpus(out_dir: str | Path, *, vocab_size: int = 8192, max_files: int | None = None,
                 overwrite: bool = False, log: Callable[[str], None] = print, progress: bool = False,
                 stdlib_root: str | Path | None = None) -> dict:
  """Build the corpus at out_dir (atomically) and return its manifest.

  max_files: a small deterministic subset, for tests. progress: a tqdm bar while reading files.
  stdlib_root: defaults to the running interpreter's.
  """
  from datasets import Dataset, DatasetDict  # heavy import, only when building or loading

  start = time.time()
  out_dir = Path(out_dir)
  _check_target(out_dir, overwrite)
  check_train_vocab_size(vocab_size)
  if max_files is not None and max_files < len(SPLITS):
    raise DataError(f"build_corpus: max_files={max_files} cannot give each of {len(SPLITS)} splits a file; "
                    f"use max_files >= {len(SPLITS)} or None for the whole stdlib")
  root = Path(stdlib_root or sysconfig.get_paths()["stdlib"])
  if not root.is_dir():
    raise DataError(f"build_corpus: stdlib root {root} is not a directory")
  rows, skipped = _read(root, stdlib_files(root), progress)
  rows.sort(key=lambda r: (r["module"], r["path"]))
  by_split = {s: [r for r in rows if split_of(r["module"]) == s] for s in SPLITS}
  if max_files is not None:
    by_split = _subset(by_split, max_files)
  empty = [s for s in SPLITS if not by_split[s]]
  if empty:
    raise DataError(f"build_corpus: split(s) {empty} of {root} are empty; raise max_files or check the stdlib root")

  out_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
  umask = os.umask(0)
  os.umask(umask)
  tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private (0700); the corpus should be readable like any other dir
  try:
    cols = ("text", "module", "path")
    dd = DatasetDict({s: Dataset.from_dict({c: [r[c] for r in by_split[s]] for c in cols}) for s in SPLITS})
    _quiet_save(dd, tmp, progress)
    log(f"training a {vocab_size}-token byte-level BPE on {len(by_split['train'])} train files")
    tok = train_bpe((r["text"] for r in by_split["train"]), vocab_size)
    tok.save(str(tmp / TOKENIZER_FILE))
    hashes = {s: split_hash(by_split[s]) for s in SPLITS}
    manifest = {
      "python_version": sys.version.split()[0],
      "stdlib_root": str(root),
      "split_rule": SPLIT_RULE,
      "max_files": max_files,
      "splits": {s: {"files": len(by_split[s]), "bytes": sum(len(r["text"].encode("utf-8")) for r in by_split[s]),
                     "sha256": hashes[s]} for s in SPLITS},
      "hash": total_hash(hashes),
      "skipped_undecodable": {"count": len(skipped), "paths": skipped},
      "tokenizer": {"file": TOKENIZER_FILE, "vocab_size": tokenizer_vocab_size(tok), "requested_vocab_size": vocab_size,
                    "sha256": _sha256((tmp / TOKENIZER_FILE).read_bytes()), "trained_on": "train"},
      "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    manifest["build_seconds"] = round(time.time() - start, 2)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: its presence marks completeness
    _move_into_place(tmp, out_dir, overwrite)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  log(f"built {out_dir}: " + ", ".join(f"{s} {manifest['splits'][s]['files']} files" for s in SPLITS)
      + f", vocab {manifest['tokenizer']['vocab_size']}, {manifest['build_seconds']} s")
  return manifest


def _quiet_save(dd, path: Path, progress: bool) -> None:
  """save_to_disk, with datasets' own per-split bars only when progress was asked for (restored afterwards)."""
  import datasets

  was_enabled = not datasets.are_progress_bars_disabled()
  if not progress:
    datasets.disable_progress_bars()
  try:
    dd.save_to_disk(str(path))
  finally:
    if was_enabled:
      datasets.enable_progress_bars()


def _is_complete(out_dir: Path) -> bool:
  return (out_dir / MANIFEST).is_file()


def _check_target(out_dir: Path, overwrite: bool) -> None:
  """Refuse before any work to replace a corpus, or a directory that is not ours, unless overwrite."""
  if out_dir.exists() and not out_dir.is_dir():
    raise DataError(f"build_corpus: {out_dir} exists and is not a directory; choose another --out")
  if overwrite or not out_dir.exists():
    return
  if _is_complete(out_dir):
    raise DataError(f"build_corpus: {out_dir} already holds a corpus; pass overwrite=True (--overwrite) to rebuild it")
  if any(out_dir.iterdir()):
    raise DataError(f"build_corpus: {out_dir} exists, is not empty and is not a corpus; choose another directory, "
                    "or pass overwrite=True (--overwrite) to replace it")


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
  old = None
  if overwrite and out_dir.exists():
    # os.replace cannot land on a non-empty directory: move the old one aside first, delete it after.
    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    os.replace(out_dir, old / "corpus")
  try:
    os.replace(tmp, out_dir)
  except OSError as e:  # another process finished a build at out_dir in the meantime
    if old is not None:
      os.replace(old / "corpus", out_dir)
      shutil.rmtree(old)
    raise DataError(f"build_corpus: could not move the new corpus to {out_dir} ({e}); another build may have "
                    "finished there first") from e
  if old is not None:
    shutil.rmtree(old)


def read_manifest(out_dir: str | Path) -> dict | None:
  """The manifest of a complete corpus at out_dir, or None if there is none."""
  path = Path(out_dir) / MANIFEST
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f"{path} is not valid JSON ({e}); delete {out_dir} and rebuild it with "
                    f"python scripts/build_corpus.py --out {out_dir}") from e


def ensure_corpus(out_dir: str | Path = DEFAULT_CORPUS_DIR, *, vocab_size: int = 8192,
                  log: Callable[[str], None] = print) -> dict:
  """The manifest of the corpus at out_dir, building it first if there is none."""
  out_dir = Path(out_dir)
  manifest = read_manifest(out_dir)
  if manifest is None:
    log(f"building the embedded stdlib corpus at {out_dir} (first use, ~{_FULL_BUILD_SECONDS} s)")
    try:
      return build_corpus(out_dir, vocab_size=vocab_size, log=log)
    except DataError:
      manifest = read_manifest(out_dir)  # a concurrent process may have built it while we did
      if manifest is None:
        raise
  have = manifest["tokenizer"]["requested_vocab_size"]
  if have != vocab_size:
    raise DataError(f"{out_dir} holds a corpus with a {have}-token tokenizer but vocab_size={vocab_size} was asked "
                    f"for; choose another corpus directory for this vocab size, or delete {out_dir} to rebuild it")
  return manifest


def load_corpus(out_dir: str | Path = DEFAULT_CORPUS_DIR):
  """(DatasetDict, tokenizers.Tokenizer, manifest) of a complete corpus."""
  from datasets import load_from_disk

  out_dir = Path(out_dir)
  fix = f"run `python scripts/build_corpus.py --out {out_dir}`"
  manifest = read_manifest(out_dir)
  if manifest is None:
    what = "does not exist" if not out_dir.exists() else f"has no {MANIFEST} (not a corpus, or an incomplete one)"
    raise DataError(f"corpus {out_dir} {what}; {fix}")
  missing = [f for f in (TOKENIZER_FILE, "dataset_dict.json") if not (out_dir / f).is_file()]
  if missing:
    raise DataError(f"corpus {out_dir} is incomplete (missing {missing}); delete it and {fix}")
  dd = load_from_disk(str(out_dir))
  if sorted(dd) != sorted(SPLITS):
    raise DataError(f"corpus {out_dir} has splits {sorted(dd)}, expected {list(SPLITS)}; delete it and {fix}")
  return dd, load_tokenizer(out_dir / TOKENIZER_FILE), manifest


def unigram_entropy(token_ids: Iterable[np.ndarray], vocab_size: int) -> float:
  """Entropy in nats of the empirical unigram distribution of the tokens: a model that ignores context cannot get
  a cross-entropy below this on the same tokens, so it is the baseline a trained model's loss is compared to."""
  counts = np.zeros(vocab_size, np.int64)
  for ids in token_ids:
    ids = np.asarray(ids).reshape(-1)
    if ids.size == 0:
      continue
    if not np.issubdtype(ids.dtype, np.integer):
      raise DataError(f"unigram_entropy: token ids must be integers, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= vocab_size:
      raise DataError(f"unigram_entropy: token id {ids.min() if ids.min() < 0 else ids.max()} is outside "
                      f"[0, {vocab_size}); pass the tokenizer's vocab size")
    counts += np.bincount(ids, minlength=vocab_size)
  total = counts.sum()
  if total == 0:
    raise DataError("unigram_entropy: no tokens given")
  p = counts[counts > 0] / total
  return float(-(p * np.log(p)).sum())
