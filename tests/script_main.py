"""A script's absl `main` run inside the test process, as `python scripts/NAME.py ARGS` runs it: the script's flags
are parsed from ARGS by `dsv4.cli.parse_flags` (the parser `cli.run` uses) and `main` gets what absl leaves.

Tests use this where they reach into the run (monkeypatch a loader, raise a signal mid-run); everything else runs
the script as a subprocess. absl's flags are process-wide, so loading a script first removes the flags of any
script loaded before (two scripts both define `--out`), and each call starts from the flags' defaults.
"""

import importlib.util
import sys
from pathlib import Path

from absl import flags

from dsv4 import cli

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
_DEFINED: set[str] = set()  # the flags the scripts loaded here defined on flags.FLAGS


def load(name: str):
  """scripts/NAME.py as a module (`NAME_script`), its flags defined afresh."""
  for flag in _DEFINED & set(flags.FLAGS):
    delattr(flags.FLAGS, flag)
  before = set(flags.FLAGS)
  spec = importlib.util.spec_from_file_location(f"{name}_script", SCRIPTS / f"{name}.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  _DEFINED.update(set(flags.FLAGS) - before)
  return script


def run_main(script, argv: list[str], monkeypatch) -> None:
  """`script.main` after parsing ARGV as its command line (sys.argv too, which scripts record). As under absl's
  app.run, a value main returns becomes the exit status (SystemExit): a script's main returns nothing."""
  command = [str(SCRIPTS / f"{script.__name__.removesuffix('_script')}.py"), *map(str, argv)]
  monkeypatch.setattr(sys, "argv", command)
  flags.FLAGS.unparse_flags()
  if (status := script.main(cli.parse_flags(command))) is not None:
    sys.exit(status)
