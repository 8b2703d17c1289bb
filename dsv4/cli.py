"""The flag parsing every absl script shares: a bad command line is one `error:` line, never a traceback.

absl's default parser prints only its own `flags.Error`s cleanly; ml_collections' config flags fail in other ways:
a typo'd override (`--config.train.stepz=10`) raises a chained KeyError/AttributeError whose text holds a useful
"Did you mean", a config file's `get_config` error (an unknown scale) arrives as a flags error quoting a whole
traceback, and a missing config file is only reported when the script first reads the config. `run(main)` parses
with `parse_flags`, which turns each of these into one line naming the flag and what to do, and exits 1 before
`main` runs. `--help` prints the script's docstring and flags and exits 0 (absl's own exits 1).
`multiprocess_flags()` gives a script the three `jax.distributed` flags once, here.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.disclaim_key_flags()  # flags defined through this module belong to the script calling it (its --help)
_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _config_flags() -> list[str]:
  """Names of the config-file flags (DEFINE_config_file), which carry `--NAME.field=value` overrides."""
  from ml_collections.config_flags.config_flags import is_config_flag
  return [name for name in FLAGS if is_config_flag(FLAGS[name])]


def _overrides(argv: list[str], name: str) -> list[str]:
  """The `--NAME.a.b` overrides on the command line, as written (without the value)."""
  found = []
  for arg in argv[1:]:
    if arg.startswith((f"--{name}.", f"-{name}.")):
      found.append(arg.lstrip("-").partition("=")[0])
  return found


def _unknown_field(error: BaseException, argv: list[str]) -> str | None:
  """`--config.train.stepz: the config has no field 'stepz'; did you mean 'steps'?` for a typo'd override."""
  text = str(error).replace("\\n", "\n").replace("\\'", "'")
  missing = re.search(r"'([^'\n]+)'", text)
  if missing is None:
    return None
  key = missing.group(1)
  hint = re.search(r'Did you mean "([^"]+)"', text)
  for name in _config_flags():
    for override in _overrides(argv, name):
      if key in override.split(".")[1:]:
        advice = f"; did you mean {hint.group(1)!r}?" if hint else (
            "; check the spelling against the config file")
        return f"--{override}: the config has no field {key!r}{advice}"
  return None


def _last_line(message: str) -> str:
  """The innermost error of a message that quotes a traceback (`ValueError: dspark.py: unknown scale …`),
  without its type."""
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  last = lines[-1] if lines else message
  return re.sub(r"^[\w.]*(Error|Exception): ", "", last)


def _config_file_error(name: str, error: BaseException, argv: list[str]) -> str:
  """One line for a config file that could not be loaded (missing, unreadable)."""
  spec = ""
  for i, arg in enumerate(argv[1:], 1):  # --config=PATH or --config PATH; the last one counts, as for absl
    if arg.startswith((f"--{name}=", f"-{name}=")):
      spec = arg.partition("=")[2]
    elif arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      spec = argv[i + 1]
  path = spec.split(":", 1)[0]
  if path and not Path(path).is_file():
    return (f"--{name}={spec}: no config file {path} (looked in {Path(path).resolve().parent}); give the path of a "
            ".py file with get_config(), relative to the current directory or absolute")
  errno = re.search(r"\[Errno \d+\][^\n]*", str(error))
  return f"--{name}={spec}: the config file could not be loaded ({errno.group(0) if errno else _last_line(str(error))})"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser with one-line errors (exit 1); returns the arguments left after the flags, as absl's does."""
  try:
    rest = FLAGS(argv)
  except SystemExit:  # absl's help flags print the usage, then exit 1: asking for help is no error
    if any(arg.lstrip("-").partition("=")[0] in _HELP_FLAGS for arg in argv[1:] if arg.startswith("-")):
      sys.exit(0)
    raise
  except flags.Error as e:
    message = str(e)
    if "Traceback" in message:  # a config file's get_config raised: keep the flag and the innermost message
      flag = re.match(r"flag (--\S+?):", message)
      message = f"{flag.group(1) + ': ' if flag else ''}{_last_line(message)}"
    else:  # several flags missing: one line each, joined
      message = "; ".join(line.strip() for line in message.splitlines() if line.strip())
    sys.exit(f"error: {message}")
  except (KeyError, AttributeError) as e:  # an override of a field the config does not have
    sys.exit(f"error: {_unknown_field(e, argv) or _last_line(str(e))}")
  except OSError as e:  # a missing config file, met while applying overrides to it
    name = next(iter(_config_flags()), "config")
    sys.exit(f"error: {_config_file_error(name, e, argv)}")
  for name in _config_flags():  # a config file that failed to load is only reported when first read
    error = getattr(FLAGS[name].value, "_error", None)
    if isinstance(error, BaseException):
      sys.exit(f"error: {_config_file_error(name, error, argv)}")
  return rest


def multiprocess_flags() -> Callable[[], bool]:
  """Defines --coordinator_address, --num_processes, --process_id; returns `start()`, which starts
  `jax.distributed` from them (dsv4.parallel.distributed.initialize; a bad combination is one `error:` line)."""
  coordinator = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)")
  processes = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
  process_id = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")

  def start() -> bool:
    from dsv4.parallel import distributed
    try:
      return distributed.initialize(coordinator.value, processes.value, process_id.value)
    except ValueError as e:
      sys.exit(f"error: {e}")
  return start


def timing_flags(default_repeats: int, repeats_help: str) -> tuple:
  """(--repeats, --allow_load, --out) of a benchmark script, as flag holders; --repeats below the harness's
  minimum (a median with its spread) is refused while parsing."""
  from dsv4.benchmarking import MIN_REPEATS

  repeats = flags.DEFINE_integer("repeats", default_repeats, repeats_help)
  flags.register_validator("repeats", lambda r: r >= MIN_REPEATS,
                           f"--repeats must be ≥ {MIN_REPEATS} (a median with its spread)")
  allow_load = flags.DEFINE_bool("allow_load", False, "record results even on a busy machine")
  out = flags.DEFINE_string("out", None, "folder to write results.md into")
  return repeats, allow_load, out


def _settle_device_work() -> None:
  """Waits for computations already dispatched: exiting while XLA still runs one can crash the interpreter's
  shutdown (a segfault after the message)."""
  jax = sys.modules.get("jax")
  if jax is not None:
    try:
      jax.block_until_ready(jax.live_arrays())
    except Exception:  # noqa: BLE001 - a failed computation has nothing left to wait for
      pass


def run(main: Callable[[list[str]], object]) -> None:
  """`absl.app.run(main)` with `parse_flags`. Library INFO logs (`datasets`' "JAX version 0.10.2 available", orbax's
  every checkpoint step) stay out of a script's output unless `--verbosity` asks for them: scripts print what they
  say, and an error stays one line. Ctrl-C that `main` does not handle is one line and exit status 130."""
  from absl import logging

  def quiet_main(argv: list[str]) -> object:
    if not FLAGS["verbosity"].present:
      logging.set_verbosity(logging.WARNING)
    try:
      return main(argv)
    except KeyboardInterrupt:  # scripts that keep partial work catch it themselves and say what they kept
      _settle_device_work()
      print("interrupted (Ctrl-C) before finishing; nothing more was written", file=sys.stderr, flush=True)
      sys.exit(130)

  app.run(quiet_main, flags_parser=parse_flags)
