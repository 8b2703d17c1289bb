"""scripts/export_target.py on a tiny pretraining run: the exported file holds the checkpoint's trainable weights
rounded to --dtype, and everything else (routing state) as the checkpoint has it, read back through load_target."""

import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from dsv4.io.storage_dtype import safetensors_dtype
from dsv4.io.target import load_target
from dsv4.model.layers import FrozenState
from dsv4.training import target_export
from tests.training.test_train_target import REPO, _command, _env


def _leaves(model, kind):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model, kind)))[0]}


@pytest.mark.slow  # two training steps and an export with its validation passes
def test_the_export_holds_the_checkpoint_rounded_to_the_asked_dtype(tmp_path, tiny_corpus):
  run, out = tmp_path / "run", tmp_path / "export"
  training = subprocess.run(_command(run, tiny_corpus)[:-7] + [
      "--config.train.steps=2", "--config.train.checkpoint_every=2", "--config.train.eval_every=2",
      "--config.train.eval_batches=1", "--config.train.batch_size=8", "--config.data.seq_len=256"],
      env=_env(), capture_output=True, text=True, timeout=600)  # its own process, as a user runs it
  assert training.returncode == 0, training.stderr[-2000:]
  done = subprocess.run([sys.executable, str(REPO / "scripts/export_target.py"), "--workdir", str(run), "--out",
                         str(out), "--dtype", "bfloat16"], env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert safetensors_dtype(out) == np.dtype(jax.numpy.bfloat16)

  trained, _, _ = target_export.restore_model(target_export.latest_checkpoint(run))
  exported = load_target(out)  # widened back to the model's float32 on load
  want, got = _leaves(trained, nnx.Param), _leaves(exported, nnx.Param)
  assert want.keys() == got.keys()
  for name, w in want.items():
    rounded = w.astype(jax.numpy.bfloat16).astype(w.dtype)
    np.testing.assert_array_equal(got[name], rounded, err_msg=name)
  assert any(not np.array_equal(w, got[name]) for name, w in want.items())  # the rounding did happen
  exported_state = _leaves(exported, FrozenState)
  for name, w in _leaves(trained, FrozenState).items():  # routing state is not a weight: not rounded
    np.testing.assert_array_equal(exported_state[name], w, err_msg=name)
