"""The resumable record of a long data run: a JSON-lines file headed by the key of the run that writes it.

Line 1 is `{"key": KEY}`; every later line is one finished unit of work (a sampled batch), appended and fsynced
as it finishes, so a killed run loses at most the unit in flight. Opening the log with the same key replays the
records in order and drops a torn last line (the one a killed run was writing); another key, or a file that is
not a log, starts it over. The file is rewritten atomically on open, so it always ends on a whole record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
  """`path` holds either its old text or `text`, never a part of it."""
  tmp = path.with_name(f".{path.name}.tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _read(path: Path, key: str, log: Callable[[str], None], accept) -> list[dict]:
  if not path.is_file():
    return []
  lines = path.read_text().splitlines()
  try:
    head = json.loads(lines[0]) if lines else {}
  except json.JSONDecodeError:
    head = {}
  if not isinstance(head, dict) or head.get("key") != key:
    if lines:
      log(f"{path} holds the partial results of another run (other model, prompts or sampler); starting over")
    return []
  records = []
  for line in lines[1:]:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      break  # the line a killed run was writing
    if not accept(len(records), record):
      break
    records.append(record)
  return records


class AppendLog:
  """`records` are what an earlier run with this key finished; `append` adds one durably. `accept(i, record)`
  may end the replay early (e.g. at a batch out of order); what follows is dropped with it."""

  def __init__(self, path: str | os.PathLike, key: str, log: Callable[[str], None] = print,
               accept: Callable[[int, dict], bool] = lambda i, record: True):
    self.path = Path(path)
    self.records = _read(self.path, key, log, accept)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in [{"key": key}, *self.records]))

  def append(self, record: dict) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    self.records.append(record)
