"""The package's one error hierarchy: every error dsv4 raises on bad input or a failed run is a `Dsv4Error`.

  Dsv4Error
    ConfigError      a config value is wrong (model, drafter, training, mesh, rules); names the field
      ShardingError  a dimension does not divide over its mesh axes; names the parameter
    DataError        a data source, column, packing argument, stream state or feature cache is unusable
    CheckpointError  a checkpoint on disk is missing, corrupt or does not match the model; names the file/tensor
      CheckpointSaveError  saving one step failed; earlier checkpoints are untouched (`.step` says which)
    TargetError      a target is missing, or does not fit the drafter it is paired with
    TrainingError    a run stopped (non-finite loss, ...); names the step and the checkpoint kept

All but TrainingError are also ValueErrors (they report bad input, and callers catch them as such); TrainingError
is a RuntimeError. Every message says what to change. Scripts catch `Dsv4Error` and print one line.
"""

from __future__ import annotations


class Dsv4Error(Exception):
  """Base of every error dsv4 raises on purpose."""


class ConfigError(Dsv4Error, ValueError):
  """A config value is wrong; the message names the field and what to do."""


class ShardingError(ConfigError):
  """A dimension does not divide over its mesh axes; the message names the parameter."""


class DataError(Dsv4Error, ValueError):
  """A data source, dataset column, packing argument or stream state is unusable; the message says what to change."""


class CheckpointError(Dsv4Error, ValueError):
  """A checkpoint on disk is missing, corrupt or does not match the model; the message says which file/tensor."""


class CheckpointSaveError(CheckpointError):
  """Saving one step failed; that step is not a checkpoint, earlier ones are untouched."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


class TargetError(Dsv4Error, ValueError):
  """A target is not where it was said to be, or does not fit the drafter; the message says which field."""


class TrainingError(Dsv4Error, RuntimeError):
  """Training stopped (non-finite loss, ...); the message names the step and the checkpoint kept."""


def brief(e: BaseException, limit: int = 200) -> str:
  """`Type: first line` of an exception from a library (orbax and TensorStore raise pages of spec), at most
  `limit` characters, for a one-line message that then says what to do."""
  first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
  text = f"{type(e).__name__}: {first}" if first else type(e).__name__
  return text if len(text) <= limit else text[:limit - 1] + "…"


__all__ = ["brief", "Dsv4Error", "ConfigError", "ShardingError", "DataError", "CheckpointError", "CheckpointSaveError",
           "TargetError", "TrainingError"]
