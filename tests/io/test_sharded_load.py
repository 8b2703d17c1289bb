"""load_sharded on a (data=2, expert=4) mesh of the 8 fake CPU devices: parameters are born in the requested
shardings and equal the non-streaming `dsv4.from_pretrained` load exactly; each device callback reads only the
bytes of its slice; the sharded model's logits equal the unsharded model's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import dsv4
from dsv4.io import names as names_lib
from dsv4.io.native_checkpoint import NativeCheckpoint
from dsv4.io.sharded_load import load_sharded
from dsv4.model.transformer import jit_forward
from tests.io import quant_reference as ref

CFG = ref.tiny_config()
MESH = jax.make_mesh((2, 4), ("data", "expert"), axis_types=(AxisType.Auto,) * 2)


def shardings_fn(path, var):
  """Experts over `expert` (and their input dim over `data`), kernels' input dim over `data`, other matrices'
  second dim over `data`, o_a_proj's groups and rank split; everything else replicated."""
  shape, axes = var.shape, var.get_metadata().get("out_sharding") or ()
  if len(shape) == 3 and axes[0] == "exp":
    spec = P("expert", "data", None)
  elif path[-1] == "o_a_proj":
    spec = P("data", None, "expert")
  elif len(shape) == 2 and path[-1] == "kernel":
    spec = P("data", None)
  elif len(shape) == 2 and shape[1] % 2 == 0:
    spec = P(None, "data")
  else:
    spec = P()
  return NamedSharding(MESH, spec)


@pytest.fixture(scope="module")
def qdir(tmp_path_factory):
  path = tmp_path_factory.mktemp("quantized")
  ref.write_model_dir(CFG, ref.random_native(CFG), path)
  return path


@pytest.fixture(scope="module")
def full(qdir):
  return dsv4.from_pretrained(qdir)


def flat(model):
  return {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model))}


class ReadLog:
  """Wraps every make_array_from_callback callback: which native tensors it read and how many stored bytes."""

  def __init__(self, monkeypatch):
    self.calls, self.current = [], None
    make, read, read_storage = jax.make_array_from_callback, NativeCheckpoint.read, NativeCheckpoint._read_storage

    def make_array(shape, sharding, callback, dtype=None):
      def logged(index):
        self.current = {"shape": shape, "index": index, "keys": set(), "bytes": 0}
        out = callback(index)
        self.calls.append(self.current)
        return out
      return make(shape, sharding, logged, dtype)

    def logged_read(ckpt, key, index=None):
      self.current["keys"].add(key)
      return read(ckpt, key, index)

    def logged_storage(ckpt, entry, index):
      out = read_storage(ckpt, entry, index)
      self.current["bytes"] += out.nbytes
      return out

    monkeypatch.setattr(jax, "make_array_from_callback", make_array)
    monkeypatch.setattr(NativeCheckpoint, "read", logged_read)
    monkeypatch.setattr(NativeCheckpoint, "_read_storage", logged_storage)


def test_born_sharded_and_equal_to_full_load(qdir, full, monkeypatch):
  log = ReadLog(monkeypatch)
  model = load_sharded(qdir, shardings_fn)
  got, want = flat(model), flat(full)
  assert got.keys() == want.keys()
  for p, var in got.items():
    arr = var[...]
    assert arr.sharding == shardings_fn(p, var), p
    assert arr.dtype == want[p][...].dtype, p
    np.testing.assert_array_equal(np.asarray(arr), np.asarray(want[p][...]), err_msg=str(p))

  # Each callback read only its slice: stored bytes <= its share of the whole native tensor(s), plus (at most)
  # every scale block of them, since a slice reads the whole blocks it starts or ends in.
  ckpt = NativeCheckpoint(qdir)
  spec_of = {n: spec for spec in names_lib.specs(model.config) for n in spec.names}
  raw = {names_lib.normalize(k): k for k in ckpt.keys()}
  sharded = 0
  for call in log.calls:
    if not call["keys"]:  # a device whose shard another device already read (replicated along some mesh axis)
      assert call["bytes"] == 0
      continue
    names = spec_of[next(iter(call["keys"]))].names
    scales = [s for n in names if (s := ckpt.scale_key(raw[n]))]
    whole = sum(ckpt.stored_bytes(raw[n]) for n in names) + sum(ckpt.stored_bytes(s) for s in scales)
    share = np.prod([len(range(*s.indices(n))) / n for s, n in zip(call["index"], call["shape"], strict=True)])
    assert call["bytes"] <= share * whole + sum(ckpt.stored_bytes(s) for s in scales), call
    if share < 1:
      sharded += 1
      assert call["bytes"] <= 0.6 * whole, call
  assert sharded >= 100
  expert_calls = [c for c in log.calls if len(c["shape"]) == 3 and c["shape"][0] == CFG.n_routed_experts]
  assert expert_calls and all(len(c["keys"]) == 1 for c in expert_calls)  # one expert per device of 4


def test_logits_equal_unsharded(qdir, full):
  """Bit for bit against the full load placed in the same shardings (same program, same inputs); against the
  single-device model up to float32 reduction order, since the sharded program sums contractions in pieces."""
  graphdef, state = nnx.split(load_sharded(qdir, shardings_fn))
  logits = jax.jit(lambda state, ids: nnx.merge(graphdef, state).forward(ids).logits_BTV)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, CFG.vocab_size, (2, 24)), jnp.int32)
  sharded = np.asarray(logits(state, ids))
  placed = jax.device_put(nnx.state(full), jax.tree.map(lambda a: a.sharding, state))
  np.testing.assert_array_equal(np.asarray(logits(placed, ids)), sharded)
  single = np.asarray(jit_forward(full)(ids).logits_BTV)
  assert np.abs(sharded - single).max() <= 1e-5 * np.abs(single).max()


def test_default_replicated_and_sharding_tree(qdir, full):
  _, abstract = nnx.split(nnx.eval_shape(lambda: dsv4.Transformer(CFG, rngs=nnx.Rngs(0))))
  tree = nnx.from_flat_state([(p, shardings_fn(tuple(p), v)) for p, v in nnx.to_flat_state(abstract)])
  want = flat(full)
  for model, expect in ((load_sharded(qdir), None), (load_sharded(qdir, tree), shardings_fn)):
    for p, var in flat(model).items():
      arr = var[...]
      if expect is None:
        assert arr.sharding.is_fully_replicated and len(arr.sharding.device_set) == jax.device_count(), p
      else:
        assert arr.sharding == expect(p, var), p
      np.testing.assert_array_equal(np.asarray(arr), np.asarray(want[p][...]), err_msg=str(p))
