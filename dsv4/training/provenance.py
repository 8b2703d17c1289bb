"""What a training run records about how it was started: the command line and the source commit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def provenance() -> dict:
  """{"command", "commit", "commit_dirty"} (commit fields None outside a git checkout), kept in every checkpoint."""
  try:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10).stdout.strip() or None
    dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout.strip())
  except (OSError, subprocess.SubprocessError):
    commit, dirty = None, None
  return {"command": " ".join(["python"] + sys.argv), "commit": commit, "commit_dirty": dirty}
