"""The README's command sequences work as written: a `train_drafter.py` line that reads regenerated data
(`--config.data.source=DIR`) comes after `regenerate.py` lines writing DIR's train and validation splits (the
splits its config reads), since each regenerate call writes one split."""

import re
import shlex
from pathlib import Path

from dsv4.configs import load_config

README = Path(__file__).resolve().parents[1] / "README.md"


def commands() -> list[list[str]]:
  text = README.read_text()
  blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
  lines = [line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
  return [shlex.split(line) for line in lines if line.startswith("python scripts/")]


def option(argv: list[str], name: str, default: str | None = None) -> str | None:
  for i, arg in enumerate(argv):
    if arg == name and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith(name + "="):
      return arg.partition("=")[2]
  return default


def test_regenerated_data_has_every_split_train_drafter_reads():
  written: dict[str, set[str]] = {}  # regenerate --out → splits written so far
  checked = 0
  for argv in commands():
    script = Path(argv[1]).name
    if script == "regenerate.py":
      written.setdefault(option(argv, "--out"), set()).add(option(argv, "--split", "train"))
    elif script == "train_drafter.py" and (source := option(argv, "--config.data.source")) in written:
      data = load_config(option(argv, "--config")).data
      needed = {option(argv, "--config.data.train_split", data.train_split),
                option(argv, "--config.data.val_split", data.val_split)}
      assert needed <= written[source], f"{' '.join(argv)}: {source} has only {sorted(written[source])} so far"
      checked += 1
  assert checked >= 1  # the README shows the sequence at least once
