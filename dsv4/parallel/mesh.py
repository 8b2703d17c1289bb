"""The device mesh from config: axes ("data", "fsdp", "expert", "tensor"), −1 = fill the remaining devices.

Sizes come as a mapping (a config section or `parse_sizes("expert=64,fsdp=4")`); missing axes are 1.
Multi-slice jobs give the slower network's (DCN) degree per axis as `dcn_<axis>`; the mesh axis is then
`dcn_<axis> × <axis>`, with each slice holding one block of the ICI shape (`create_hybrid_device_mesh`).

Axes are `AxisType.Auto` (classic GSPMD), not the `jax.make_mesh` default Explicit: the model carries logical
names on its parameters only and has no per-op `out_sharding`, so in Explicit mode ambiguous ops (the
embedding gather, einsums contracting a sharded dim, `ragged_dot` over sharded experts) would be errors.
In Auto mode XLA propagates shardings from the parameters and the batch; later expert-parallel dispatch will
use `jax.shard_map` locally.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AbstractMesh, AxisType, Mesh

from dsv4.errors import ConfigError

MESH_AXES = ("data", "fsdp", "expert", "tensor")
DCN_KEYS = tuple(f"dcn_{a}" for a in MESH_AXES)


def parse_sizes(text: str) -> dict[str, int]:
  """`expert=64,fsdp=4` → {'expert': 64, 'fsdp': 4}; `dcn_data=2` for multi-slice degrees."""
  sizes = {}
  for item in (t.strip() for t in text.split(",") if t.strip()):
    name, sep, value = item.partition("=")
    name = name.strip()
    try:
      sizes[name] = int(value)
    except ValueError:
      raise ConfigError(f"mesh {text!r}: {item!r} is not axis=integer (e.g. expert=64,fsdp=-1).") from None
    if not sep:
      raise ConfigError(f"mesh {text!r}: {item!r} is not axis=integer (e.g. expert=64,fsdp=-1).")
  check_names(sizes, f"mesh {text!r}")
  return sizes


def check_names(sizes: Mapping[str, int], where: str = "mesh") -> None:
  unknown = sorted(set(sizes) - set(MESH_AXES) - set(DCN_KEYS))
  if unknown:
    raise ConfigError(f"{where}: unknown axis name(s) {unknown}; axes are {MESH_AXES} (and {DCN_KEYS} for the "
                    "multi-slice degrees).")


def resolve(sizes: Mapping[str, int], n_devices: int, where: str = "mesh", prefix: str = "",
            unit: str = "devices") -> tuple[int, ...]:
  """Sizes of MESH_AXES (missing = 1, one −1 filled) whose product is `n_devices`; errors name the axis.

  `prefix`="dcn_" resolves the multi-slice degrees against the number of slices (`unit`="slices").
  """
  values = {a: sizes.get(prefix + a, 1) for a in MESH_AXES}
  for a, v in values.items():
    if not isinstance(v, int | np.integer) or isinstance(v, bool) or v == 0 or v < -1:
      raise ConfigError(f"{where}.{prefix}{a}={v!r}: must be a positive integer or -1 (fill the remaining devices).")
  fill = [a for a, v in values.items() if v == -1]
  if len(fill) > 1:
    raise ConfigError(f"{where}: more than one axis is -1 ({', '.join(prefix + a for a in fill)}); only one axis "
                    "can fill the remaining devices, give the others explicit sizes.")
  for a, v in values.items():
    if v != -1 and n_devices % v:
      raise ConfigError(f"{where}.{prefix}{a}={v} does not divide the {n_devices} {unit}; pick a divisor of "
                      f"{n_devices}.")
  used = math.prod(v for v in values.values() if v != -1)
  listing = " × ".join(f"{prefix}{a}={v}" for a, v in values.items() if v != -1)
  if fill:
    if n_devices % used:
      raise ConfigError(f"{where}.{prefix}{fill[0]}=-1: the other axes ({listing} = {used}) do not divide the "
                      f"{n_devices} {unit}, so there is no whole size to fill.")
    values[fill[0]] = n_devices // used
  elif used != n_devices:
    raise ConfigError(f"{where}: {listing} = {used} {unit}, but there are {n_devices}; make the product "
                    f"{n_devices} or set one axis to -1.")
  return tuple(values[a] for a in MESH_AXES)


def _granules(devices: Sequence) -> tuple[int, bool]:
  """(number of slices, process_is_granule): TPU slices by `slice_index`, else one granule per process."""
  if all(hasattr(d, "slice_index") and d.slice_index is not None for d in devices):
    return len({d.slice_index for d in devices}), False
  return len({d.process_index for d in devices}), True


def device_array(sizes: Mapping[str, int], devices: Sequence | None = None) -> np.ndarray:
  """Devices arranged as the mesh: [data, fsdp, expert, tensor] (each = dcn degree × ICI degree)."""
  check_names(sizes)
  devices = list(jax.devices() if devices is None else devices)
  if any(sizes.get(k, 1) != 1 for k in DCN_KEYS):
    n_slices, process_is_granule = _granules(devices)
    dcn = resolve(sizes, n_slices, "mesh", prefix="dcn_", unit="slices")
    if len(devices) % n_slices:
      raise ConfigError(f"mesh: {len(devices)} devices do not split evenly over {n_slices} slices.")
    ici = resolve(sizes, len(devices) // n_slices, "mesh")
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=process_is_granule)
  return mesh_utils.create_device_mesh(resolve(sizes, len(devices)), devices, allow_split_physical_axes=True)


def make_mesh(sizes: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
  """A Mesh over MESH_AXES with Auto axis types (see the module docstring for why)."""
  return Mesh(device_array(sizes, devices), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def abstract_mesh(sizes: Mapping[str, int], n_devices: int | None = None) -> AbstractMesh:
  """A device-free mesh of the same axes (each dcn × ICI degree), for planning meshes larger than this host.

  A −1 size is filled from `n_devices`; with `n_devices` given the product is checked against it.
  """
  check_names(sizes)
  for k in DCN_KEYS:
    if sizes.get(k, 1) < 1:
      raise ConfigError(f"mesh.{k}={sizes[k]}: an abstract mesh needs explicit multi-slice degrees.")
  total = {a: sizes.get(a, 1) * (sizes.get(f"dcn_{a}", 1) if sizes.get(a, 1) != -1 else 1) for a in MESH_AXES}
  if n_devices is None:
    fill = [a for a, v in total.items() if v == -1]
    if fill:
      raise ConfigError(f"mesh.{fill[0]}=-1: an abstract mesh needs the device count to fill it (n_devices).")
    shape = tuple(total.values())
  else:
    shape = resolve(total, n_devices)
  return AbstractMesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def mesh_sizes(mesh) -> dict[str, int]:
  """{axis: size} of a Mesh or AbstractMesh."""
  return dict(mesh.shape)
