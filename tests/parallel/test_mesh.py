"""Meshes from config sizes: −1 fills, Auto axes, multi-slice layout, and errors that name the axis."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from dsv4.errors import ConfigError
from dsv4.parallel.config import mesh_from_config, mesh_section
from dsv4.parallel.mesh import MESH_AXES, abstract_mesh, device_array, make_mesh, parse_sizes


def test_fill_and_auto_axes():
  mesh = make_mesh({"fsdp": 2, "expert": -1, "tensor": 2})
  assert mesh.axis_names == MESH_AXES
  assert dict(mesh.shape) == {"data": 1, "fsdp": 2, "expert": 2, "tensor": 2}
  assert mesh.axis_types == (AxisType.Auto,) * 4
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_config_section():
  assert dict(mesh_from_config({"mesh": mesh_section(expert=4)}).shape) == {"data": 1, "fsdp": 2, "expert": 4,
                                                                          "tensor": 1}
  assert dict(mesh_from_config({}).shape)["fsdp"] == 8  # no section: one fsdp axis over every device


@pytest.mark.parametrize("sizes, names", [
    ({"fsdp": 4, "expert": 4}, ["fsdp=4", "expert=4", "16 devices", "8"]),   # product ≠ device count
    ({"fsdp": -1, "expert": -1}, ["fsdp", "expert", "more than one"]),         # two fills
    ({"fsdp": 3}, ["mesh.fsdp=3", "does not divide"]),                          # size not a divisor
    ({"data": -1, "fsdp": 4, "expert": 4}, ["mesh.data=-1", "do not divide"]),  # nothing whole to fill
    ({"tensor": 0}, ["mesh.tensor=0"]),
    ({"experts": 8}, ["experts"]),                                                # unknown axis
])
def test_errors_name_the_axis(sizes, names):
  with pytest.raises(ConfigError) as e:
    make_mesh(sizes)
  for name in names:
    assert name in str(e.value)


def test_parse_sizes():
  assert parse_sizes("expert=64, fsdp=-1,dcn_data=2") == {"expert": 64, "fsdp": -1, "dcn_data": 2}
  assert parse_sizes("") == {}
  with pytest.raises(ConfigError, match="'fsdp4'"):
    parse_sizes("fsdp4")


class FakeDevice:
  """Enough of a TPU device for create_hybrid_device_mesh: an id and a slice."""

  def __init__(self, i, slice_index):
    self.id, self.slice_index, self.process_index = i, slice_index, 0
    self.platform = self.device_kind = "cpu"


def test_multi_slice_layout():
  """dcn_data=2 over two slices of 4: each data row is one slice, the ICI axes stay inside it."""
  devices = [FakeDevice(i, i // 4) for i in range(8)]
  arr = device_array({"dcn_data": 2, "fsdp": -1}, devices)
  assert arr.shape == (2, 4, 1, 1)
  assert [{d.slice_index for d in row.flat} for row in arr] == [{0}, {1}]
  with pytest.raises(ConfigError, match="mesh.dcn_data=4"):
    device_array({"dcn_data": 4, "fsdp": -1}, devices)
  with pytest.raises(ConfigError, match="mesh.fsdp=8"):  # per slice only 4 devices
    device_array({"dcn_data": 2, "fsdp": 8}, devices)


def test_abstract_mesh():
  mesh = abstract_mesh({"expert": 64, "fsdp": 4, "dcn_data": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "expert": 64, "tensor": 1}
  assert dict(abstract_mesh({"expert": 8, "fsdp": -1}, n_devices=64).shape)["fsdp"] == 8
  with pytest.raises(ConfigError, match="mesh.fsdp=-1"):
    abstract_mesh({"fsdp": -1})
  assert np.prod(list(mesh.shape.values())) == 512
