"""The one logical-axis rules table, and the NamedShardings it gives a model's state.

Parameters carry logical names as their NNX `out_sharding` metadata (dsv4.model.layers.param); a rule maps a
logical name to a mesh axis, a tuple of mesh axes (their product splits the dimension) or None (replicated).
Within one PartitionSpec a mesh axis shards at most one dimension: a later dimension asking for an axis already
used drops it. That is what lets `embed` take ("fsdp", "expert") — FSDP over both axes for attention and
dense weights, so they are not replicated per expert group — while an expert weight [exp, embed, mlp] gives
`expert` to `exp` and keeps only `fsdp` for `embed`.

Rules are a tuple of (logical, mesh-axis-or-tuple-or-None) pairs; a config's `rules` section overrides
entries of DEFAULT_RULES by logical name (`rules_with(overrides)`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.errors import ConfigError, ShardingError
from dsv4.parallel.mesh import MESH_AXES

log = logging.getLogger(__name__)

FSDP = ("fsdp", "expert")  # weight dims sharded FSDP-style: every big matrix has one

DEFAULT_RULES = (
    # --- parameters -----------------------------------------------------------------------------
    ("vocab", "tensor"),       # embedding rows, head columns, hash-table rows
    ("embed", FSDP),           # the model width
    ("q_lora", FSDP),          # low-rank query width (q_a output, q_b input)
    ("o_lora", FSDP),          # low-rank output width (o_a output, o_b input)
    ("heads", "tensor"),       # H·head_dim of q_b; per-group head dims of o_a; sinks
    ("o_groups", "tensor"),    # output-projection groups (o_a's first dim)
    ("kv", None),              # the single shared K=V head and compressor widths: small
    ("mlp", "tensor"),         # expert / shared-expert / MTP projection hidden width
    ("exp", "expert"),         # routed experts
    ("norm", None),            # RMSNorm weights
    # --- activations (sharded forward, decode caches) -------------------------------------------
    ("batch", ("data", "fsdp")),
    ("seq", None),
    ("cache_batch", "data"),   # decode state rows
    ("cache_seq", None),       # decode state positions
)


def _axes(value, where: str) -> tuple[str, ...]:
  """A rule's value as a tuple of mesh axes: None → (), 'fsdp' → ('fsdp',)."""
  if value is None:
    return ()
  names = (value,) if isinstance(value, str) else tuple(value)
  bad = [a for a in names if a not in MESH_AXES]
  if bad:
    raise ConfigError(f"{where}: mesh axis {bad[0]!r} is not one of {MESH_AXES}.")
  return names


def rules_with(overrides: Iterable[Sequence] = (), base: Sequence[tuple] = DEFAULT_RULES) -> tuple[tuple, ...]:
  """`base` with entries replaced (or added) by `overrides` pairs, validated; order of `base` kept."""
  table = {name: _axes(value, f"rule {name!r}") for name, value in base}
  for pair in overrides or ():
    if len(pair) != 2 or not isinstance(pair[0], str):
      raise ConfigError(f"rules: {pair!r} is not a (logical name, mesh axis | tuple | None) pair.")
    table[pair[0]] = _axes(pair[1], f"rule {pair[0]!r}")
  return tuple((name, axes[0] if len(axes) == 1 else (axes or None)) for name, axes in table.items())


def rules_from_config(cfg) -> tuple[tuple, ...]:
  """DEFAULT_RULES overridden by the config's `rules` section (absent or empty: the defaults)."""
  return rules_with(cfg.get("rules", None) or ())


def parse_rules(text: str) -> tuple[tuple, ...]:
  """`cache_batch=data+fsdp,kv=none` → (("cache_batch", ("data", "fsdp")), ("kv", None)): command-line overrides."""
  pairs = []
  for item in (t.strip() for t in text.split(",") if t.strip()):
    name, sep, value = item.partition("=")
    if not sep or not name.strip():
      raise ConfigError(f"rules {text!r}: {item!r} is not logical=axis[+axis...] or logical=none.")
    axes = tuple(a.strip() for a in value.split("+") if a.strip() and a.strip().lower() != "none")
    pairs.append((name.strip(), axes or None))
  return rules_with(pairs, base=())


def logical_to_spec(axes: Sequence[str | None], rules: Sequence[tuple]) -> P:
  """PartitionSpec of logical `axes`; a mesh axis already used by an earlier dimension is dropped."""
  table = dict(rules)
  used, spec = set(), []
  for name in axes:
    if name is None:
      spec.append(None)
      continue
    if name not in table:
      raise ConfigError(f"logical axis {name!r} has no rule; add ({name!r}, <mesh axis, tuple or None>) to the "
                       f"rules (known: {sorted(table)}).")
    kept = tuple(a for a in _axes(table[name], f"rule {name!r}") if a not in used)
    used.update(kept)
    spec.append(kept[0] if len(kept) == 1 else (kept or None))
  return P(*spec)


def checked_spec(where: str, shape: Sequence[int], axes: Sequence[str | None], rules, mesh,
                 fallback: str | None = None) -> P:
  """logical_to_spec on this mesh: axes the mesh lacks are dropped, and every dimension must divide.

  A dimension that its mesh axes do not divide is an error naming `where`, the dimension and the axes;
  with fallback="replicate" that dimension is replicated instead (a warning is logged).
  """
  if fallback not in (None, "replicate"):
    raise ValueError(f"fallback must be None or 'replicate', got {fallback!r}")
  if len(axes) != len(shape):
    raise ShardingError(f"{where}: logical axes {tuple(axes)} do not match its shape {tuple(shape)}.")
  sizes = dict(mesh.shape)
  spec = []
  for dim, (n, name, entry) in enumerate(zip(shape, axes, logical_to_spec(axes, rules), strict=True)):
    names = tuple(a for a in ((entry,) if isinstance(entry, str) else entry or ()) if a in sizes)
    k = math.prod(sizes[a] for a in names)
    if n % k:
      msg = (f"{where}: dimension {dim} (size {n}, logical {name!r}) does not divide over mesh axes {names} "
             f"(size {k})")
      if fallback != "replicate":
        raise ShardingError(f"{msg}; change the mesh, override the rule for {name!r}, or pass "
                            "fallback='replicate'.")
      log.warning("%s; replicating that dimension", msg)
      names = ()
    spec.append(names[0] if len(names) == 1 else (names or None))
  return P(*spec)


def path_str(path) -> str:
  return ".".join(str(p) for p in path)


def variable_sharding(path, var: nnx.Variable, mesh, rules, fallback: str | None = None) -> NamedSharding:
  """NamedSharding of one (real or abstract) variable from its `out_sharding` logical axes; none → replicated."""
  axes = var.get_metadata().get("out_sharding")
  value = var.get_value()
  if axes is None:
    return NamedSharding(mesh, P())
  return NamedSharding(mesh, checked_spec(path_str(path), value.shape, tuple(axes), rules, mesh, fallback))


def state_shardings(tree, mesh, rules, fallback: str | None = None) -> nnx.State:
  """NamedShardings shaped like `nnx.state(tree)` (each Variable's value replaced by its sharding).

  `tree` is a model (real or from nnx.eval_shape) or its state; Param and FrozenState alike. The result is a
  valid `out_shardings`/`in_shardings` for `jax.jit` over the state, and a `shardings` for
  `dsv4.io.sharded_load.load_sharded`.
  """
  state = nnx.state(tree) if isinstance(tree, nnx.Module) else tree
  flat = [(path, var.replace(variable_sharding(path, var, mesh, rules, fallback)))
          for path, var in nnx.to_flat_state(state)]
  return nnx.from_flat_state(flat)


def shardings_fn(mesh, rules, fallback: str | None = None):
  """`fn(path, abstract_variable) -> NamedSharding`, the form dsv4.io.sharded_load.load_sharded takes."""
  return lambda path, var: variable_sharding(path, var, mesh, rules, fallback)


def shard_bytes(shape, dtype, sharding: NamedSharding) -> int:
  """Bytes one device holds of an array of `shape` under `sharding` (works on an AbstractMesh)."""
  return math.prod(sharding.shard_shape(tuple(shape))) * jax.numpy.dtype(dtype).itemsize
