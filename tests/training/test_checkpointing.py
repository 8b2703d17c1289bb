"""TrainCheckpointer: what is kept, bit-exact restore (also into shardings), and that killed or failed saves never
count as checkpoints."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from dsv4.errors import CheckpointError, CheckpointSaveError
from dsv4.training.checkpointing import TrainCheckpointer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _state(seed: int) -> dict:
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {
    "params": {"w": jax.random.normal(k1, (8, 4), jnp.bfloat16), "inner": {"b": jax.random.normal(k2, (4,))}},
    "opt_state": {"count": jnp.array([seed, 7], jnp.int32)},
    "step": jnp.array(seed, jnp.int64 if jax.config.jax_enable_x64 else jnp.int32),
  }


def _abstract(state, sharding=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _assert_bit_identical(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    g, w = np.asarray(g), np.asarray(w)
    assert g.dtype == w.dtype and g.shape == w.shape
    assert g.tobytes() == w.tobytes()


def _step_dirs(path) -> list[str]:
  return sorted(os.listdir(path))


def test_interval_keep_and_bit_exact_restore(tmp_path):
  states = {s: _state(s) for s in range(1, 8)}
  with TrainCheckpointer(tmp_path / "ck", every=2, keep=2) as ck:
    saved = [s for s in states if ck.save(s, states[s], {"shard": s, "pos": [s, 2]}, {"cfg": {"lr": 1e-3}, "s": s})]
    assert saved == [2, 4, 6]
    ck.wait()
    assert ck.all_steps() == [4, 6] and ck.latest_step() == 6
    assert _step_dirs(tmp_path / "ck") == ["4", "6"]  # step 2 deleted, no temporary left

    state, data_state, meta = ck.restore(_abstract(states[6]))
    _assert_bit_identical(state, states[6])
    assert data_state == {"shard": 6, "pos": [6, 2]} and meta == {"cfg": {"lr": 1e-3}, "s": 6}
    state, _, meta = ck.restore(_abstract(states[4]), step=4)
    _assert_bit_identical(state, states[4])
    assert meta["s"] == 4


def test_force_existing_and_older_steps(tmp_path):
  with TrainCheckpointer(tmp_path, every=10, keep=3) as ck:
    assert ck.save(3, _state(3), {}, {}, force=True)
    assert not ck.save(3, _state(3), {}, {}, force=True)  # already saved (e.g. a final forced save at a save step)
    with pytest.raises(CheckpointError, match=r"step 2 .*newer step 3"):
      ck.save(2, _state(2), {}, {}, force=True)
    with pytest.raises(TypeError, match=r"step 10: meta is not JSON"):
      ck.save(10, _state(10), {}, {"x": np.float32(1)})
    assert ck.all_steps() == [3]


def test_restore_into_named_sharding(tmp_path):
  mesh = jax.make_mesh((2,), ("x",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
  sharding = NamedSharding(mesh, P("x"))
  state = {"a": jnp.arange(16, dtype=jnp.float32).reshape(8, 2), "b": jnp.arange(4, dtype=jnp.bfloat16)}
  with TrainCheckpointer(tmp_path, every=1) as ck:
    ck.save(1, state, {}, {})
  with TrainCheckpointer(tmp_path, every=1) as ck:  # a fresh process would open the directory like this
    restored, _, _ = ck.restore(_abstract(state, sharding))
  for leaf in jax.tree.leaves(restored):
    assert leaf.sharding == sharding
  _assert_bit_identical(restored, state)


_KILLED_SAVE = """
import os, signal, sys, time
import jax, numpy as np
from dsv4.training.checkpointing import TrainCheckpointer
ck = TrainCheckpointer(sys.argv[1], every=1)
ck.save(1, {"w": jax.numpy.ones((4,))}, {"pos": 1}, {})
ck.wait()
big = jax.device_put(np.random.default_rng(0).standard_normal(50_000_000, dtype=np.float32))  # 200 MB, incompressible
ck.save(2, {"w": big}, {"pos": 2}, {})
tmp = os.path.join(sys.argv[1], "2.orbax-checkpoint-tmp")
deadline = time.time() + 10
while not os.path.exists(tmp) and time.time() < deadline:
  time.sleep(0.001)
print("latest while writing:", ck.latest_step(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.slow
def test_save_killed_midway_is_not_a_checkpoint(tmp_path):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}
  proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(tmp_path)], env=env, timeout=300, capture_output=True)
  assert proc.returncode == -9, proc.stderr.decode()[-2000:]
  assert "latest while writing: 1" in proc.stdout.decode()
  # The kill must have hit a half-written step, or this test tested nothing.
  assert _step_dirs(tmp_path) == ["1", "2.orbax-checkpoint-tmp"]
  with TrainCheckpointer(tmp_path, every=1) as ck:
    assert ck.latest_step() == 1 and ck.all_steps() == [1]
    state, data_state, _ = ck.restore(_abstract({"w": jnp.ones((4,))}))
    _assert_bit_identical(state, {"w": jnp.ones((4,))})
    assert data_state == {"pos": 1}
    assert _step_dirs(tmp_path) == ["1", "2.orbax-checkpoint-tmp"]  # opening to read deletes nothing
    ck.save(3, {"w": jnp.zeros((4,))}, {"pos": 3}, {})  # saving clears the leftover
  assert _step_dirs(tmp_path) == ["1", "3"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failed-commit teardown
@pytest.mark.parametrize("async_save", [True, False])
def test_failed_save_raises_and_keeps_previous(tmp_path, monkeypatch, async_save):
  ck = TrainCheckpointer(tmp_path, every=1, keep=1, async_save=async_save)
  ck.save(1, _state(1), {"pos": 1}, {})
  ck.wait()

  async def broken_write(self, x, directory):
    raise OSError("disk full (injected)")

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", broken_write)
  with pytest.raises(CheckpointSaveError, match=r"saving step 2 .*disk full") as info:
    ck.save(2, _state(2), {"pos": 2}, {})
    assert ck.latest_step() == 1  # async: not step 2 while it runs (once failed, this raises instead)
    ck.wait()  # async: the write fails in the background and surfaces here at the latest
  assert info.value.step == 2
  monkeypatch.undo()

  assert ck.latest_step() == 1 and ck.all_steps() == [1]
  state, data_state, _ = ck.restore(_abstract(_state(1)))  # keep=1 did not delete step 1 for the failed step 2
  _assert_bit_identical(state, _state(1))
  assert data_state == {"pos": 1}
  assert "2" not in _step_dirs(tmp_path)
  ck.save(3, _state(3), {"pos": 3}, {})  # saving goes on after a failure
  assert ck.all_steps() == [3] and "3" in _step_dirs(tmp_path)
  ck.close()


def test_restore_from_empty_or_missing_directory(tmp_path):
  abstract = _abstract(_state(1))
  for path in (tmp_path / "empty", tmp_path / "missing" / "deeper"):
    path.parent.mkdir(exist_ok=True)
    if path.name == "empty":
      path.mkdir()
    with TrainCheckpointer(path, every=1) as ck:
      assert ck.latest_step() is None
      with pytest.raises(CheckpointError, match="no finished checkpoint in " + re.escape(str(path))):
        ck.restore(abstract)
  with TrainCheckpointer(tmp_path / "one", every=1) as ck:
    ck.save(1, _state(1), {}, {})
    with pytest.raises(CheckpointError, match=r"step 5 is not a checkpoint .*available: \[1\]"):
      ck.restore(abstract, step=5)
  (tmp_path / "file").write_text("")
  with pytest.raises(CheckpointError, match=r"is a file"):
    TrainCheckpointer(tmp_path / "file", every=1)
