"""Loading a target from disk: the one loader of train_drafter, regenerate, `dsv4.load_drafter` and the benchmarks.

A target directory is one of (`target_format`):
  transformers  config.json + *.safetensors: an export such as assets/targets/small, of the family its
                `model_type` names (dsv4.io.family)
  dsv4          dsv4_config.json + state/: a dsv4 model checkpoint (dsv4.io.checkpoint)
  workdir       a `train_target.py` workdir: the latest finished step under checkpoints/ (parameters, routing state,
                and the run's config in its metadata)
  gguf          a llama.cpp .gguf file, or the name of a model shipped in an installed wheel
                (`smollm2-135m-instruct`, dsv4.io.gguf_models); recorded by that name, so a drafter finds its
                target through the wheel on any machine

`read_target_config` reads the config alone, so every check can run before the weights are loaded; `load_target`
loads the model. `describe` is what a drafter checkpoint records about its target, so that `dsv4.load_drafter`
can find it again and refuse one made for something else (dsv4.io.drafter_checkpoint). Training a target that is
not there yet is training's business (dsv4.training.target_source.ensure_target).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import nnx

from dsv4.configs import model_config
from dsv4.errors import CheckpointError, TargetError
from dsv4.io import checkpoint, family
from dsv4.model.config import ModelConfig
from dsv4.model.layers import FrozenState
from dsv4.model.transformer import Transformer

FORMATS = ("transformers", "dsv4", "workdir", "gguf")


def is_gguf(path: str | os.PathLike) -> bool:
  """A .gguf file or the name of a known wheel model (not a directory)."""
  from dsv4.io.gguf_models import MODELS
  p = Path(path)
  return not p.is_dir() and (p.suffix == ".gguf" or str(path).lower() in MODELS)


def target_format(path: str | os.PathLike) -> str | None:
  """One of FORMATS, or None (nothing finished there)."""
  if is_gguf(path):
    return "gguf"
  path = Path(path)
  if (path / checkpoint.CONFIG_FILE).is_file():
    return "dsv4"
  if (path / "config.json").is_file():
    return "transformers"
  ckpts = path / "checkpoints"
  if ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
    return "workdir"
  return None


def latest_checkpoint(workdir: str | Path) -> Path:
  """The newest finished step directory of a `train_target.py` workdir."""
  root = Path(workdir).absolute() / "checkpoints"
  steps = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
  if not steps:
    raise CheckpointError(f"{root}: no finished checkpoint; train first with scripts/train_target.py --workdir "
                          f"{workdir}.")
  return root / str(steps[-1])


def _run_config(step_dir: Path) -> tuple[ml_collections.ConfigDict, dict]:
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as ckptr:
    meta = ckptr.restore(step_dir / "meta")
  return ml_collections.ConfigDict(meta["config"]), meta


def restore_state_on_one_device(state_dir: Path) -> dict:
  """A training checkpoint's saved state (params, frozen, optimizer, step) on this process's first device, whatever
  mesh and process count wrote it."""
  one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(state_dir)
    tree = getattr(getattr(tree, "item_metadata", tree), "tree", getattr(tree, "item_metadata", tree))
    return ckptr.restore(state_dir, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
                                                 tree))


def restore_model(step_dir: Path) -> tuple[Transformer, ml_collections.ConfigDict, dict]:
  """(model with a training checkpoint's params and routing state, the run's config, the checkpoint's meta)."""
  config, meta = _run_config(step_dir)
  cfg = model_config(config)
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, params, frozen = nnx.split(abstract, nnx.Param, FrozenState)
  saved = restore_state_on_one_device(step_dir / "state")  # a multi-host run exports on one machine
  return nnx.merge(graphdef, saved["params"], saved["frozen"]), config, meta


def _missing(path: Path) -> TargetError:
  if not path.is_dir():
    return TargetError(f"target {path}: no such directory; pass the directory of an exported target such as "
                       "assets/targets/small")
  return TargetError(f"target {path}: no config.json (an export in the transformers layout) or "
                     f"{checkpoint.CONFIG_FILE} (a dsv4 model checkpoint), and no finished checkpoint under "
                     "checkpoints/ (a train_target.py workdir); pass the directory of an exported target such as "
                     "assets/targets/small")


def read_target_config(path: str | os.PathLike) -> tuple[ModelConfig, str]:
  """(ModelConfig, format) of a target directory, without loading its weights."""
  fmt = target_format(path)
  if fmt == "gguf":  # opening the file checks all of it (architecture, types, length) and reads no tensor
    from dsv4.io.gguf import open_gguf
    from dsv4.model.dense_config import dense_config_from_hf
    f = open_gguf(path)
    return dense_config_from_hf(f.config, f.path), fmt
  path = Path(path)
  fmt = fmt if path.is_dir() else None
  try:
    if fmt == "dsv4":
      return checkpoint.read_model_config(path), fmt
    if fmt == "transformers":
      return family.read_config(path), fmt
    if fmt == "workdir":
      return model_config(_run_config(latest_checkpoint(path))[0]), fmt
  except (CheckpointError, ValueError) as e:  # a broken config file: say which target
    raise TargetError(f"target {path}: {e}") from e
  raise _missing(path)


def load_target(path: str | os.PathLike, fmt: str | None = None) -> Transformer:
  """The target model at `path` (`fmt`: its format when already read by `read_target_config`)."""
  fmt = fmt or target_format(path)
  if fmt == "gguf":
    from dsv4.io.gguf import from_pretrained
    return from_pretrained(path)
  path = Path(path)
  fmt = fmt if path.is_dir() else None
  if fmt == "transformers":
    return family.from_pretrained(path)
  if fmt == "dsv4":
    return checkpoint.load_model(path)
  if fmt == "workdir":
    return restore_model(latest_checkpoint(path))[0]
  raise _missing(path)


def tokenizer_path(path: str | Path) -> Path | None:
  """The target's tokenizer.json, if it ships one (exports do; a GGUF carries its tokenizer in its metadata)."""
  p = Path(path) / "tokenizer.json"
  return p if p.is_file() else None


def recorded_path(path: str | os.PathLike) -> str:
  """How a target is written into what others read later: a wheel model by its name, anything else absolute."""
  from dsv4.io.gguf_models import MODELS
  return str(path).lower() if str(path).lower() in MODELS and not Path(path).exists() else str(Path(path).absolute())


def shipped_path(path: str) -> str:
  """A recorded target path as a shipped asset records it: from the repository's assets/ folder on when it points
  into one (`assets/targets/small`), so the record does not name the machine it was made on."""
  parts = Path(path).parts
  return str(Path(*parts[parts.index("assets"):])) if "assets" in parts else path


def resolve_recorded(path: str) -> str:
  """Where a recorded target path is now: absolute paths and paths that exist here as they are, else a shipped
  (repository-relative) path against the repository."""
  p = Path(path)
  if p.is_absolute() or p.exists():
    return str(p)
  in_repo = Path(__file__).resolve().parents[2] / p
  return str(in_repo) if in_repo.exists() else str(p)


def config_hash(cfg: ModelConfig) -> str:
  return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def describe(path: str | Path, cfg: ModelConfig) -> dict:
  """What a drafter checkpoint records about its target."""
  return {"path": recorded_path(path), "config": cfg.to_dict(), "config_hash": config_hash(cfg)}


__all__ = ["FORMATS", "config_hash", "describe", "is_gguf", "latest_checkpoint", "load_target", "read_target_config",
           "recorded_path", "resolve_recorded", "restore_model", "shipped_path", "target_format", "tokenizer_path"]
