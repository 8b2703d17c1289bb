"""scripts/train_target.py end to end on the tiny target: a run killed by SIGKILL after its second checkpoint and
re-run by the same command ends bitwise equal to an uninterrupted run; a non-finite loss stops training, names the
step and keeps the last good checkpoint; bad data input fails before compute."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from dsv4.configs import load_config
from dsv4.errors import DataError
from dsv4.training import pretrain_loop

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 16, 4


def _command(workdir, corpus):
  return [sys.executable, str(REPO / "scripts" / "train_target.py"), "--config", str(REPO / "configs/target/tiny.py"),
          "--workdir", str(workdir), f"--config.data.corpus_dir={corpus}", f"--config.train.steps={STEPS}",
          f"--config.train.checkpoint_every={EVERY}", "--config.train.eval_every=8", "--config.train.eval_batches=2",
          "--config.train.batch_size=8", "--config.train.log_every=2", "--config.data.seq_len=256"]


def _env():
  # No shared persistent compile cache: a run reading entries other test workers are writing aborted (SIGABRT) once.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  env.pop("PYTEST_XDIST_WORKER", None)
  return env


def _final_state(workdir, step):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(Path(workdir).absolute() / "checkpoints" / str(step) / "state")


@pytest.mark.slow
def test_sigkill_after_second_checkpoint_then_rerun_equals_uninterrupted_run(tmp_path, tiny_corpus):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  done = subprocess.run(_command(straight, tiny_corpus), env=_env(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result["step"] == STEPS and result["checkpoint"].endswith(f"/{STEPS}")

  proc = subprocess.Popen(_command(killed, tiny_corpus), env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  second = killed / "checkpoints" / str(2 * EVERY)
  deadline = time.time() + 600
  while not second.is_dir() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, "the run finished before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "checkpoints" / str(STEPS)).exists()  # it really stopped short

  resumed = subprocess.run(_command(killed, tiny_corpus), env=_env(), capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from" in resumed.stdout + resumed.stderr
  a, b = _final_state(straight, STEPS), _final_state(killed, STEPS)
  leaves_a, leaves_b = _flat(a), _flat(b)
  assert leaves_a.keys() == leaves_b.keys()
  for key in leaves_a:  # params, routing biases, optimizer moments, step: bit for bit
    np.testing.assert_array_equal(leaves_a[key], leaves_b[key], err_msg=key)


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f"{prefix}/{k}"))
    return out
  if isinstance(tree, list | tuple):
    out = {}
    for i, v in enumerate(tree):
      out.update(_flat(v, f"{prefix}/{i}"))
    return out
  return {prefix: np.asarray(tree)}


def _tiny_config(corpus, **train):
  config = load_config(str(REPO / "configs/target/tiny.py"))
  config.data.corpus_dir, config.data.seq_len = str(corpus), 256
  config.train.update(dict(batch_size=8, eval_every=100, eval_batches=1, log_every=1, **train))
  return config


@pytest.mark.slow  # eight checkpointed training steps
def test_non_finite_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_corpus):
  config = _tiny_config(tiny_corpus, steps=8, checkpoint_every=1, lr=1e30, clip_norm=0.0, warmup_steps=1,
                        async_checkpoints=False)
  with pytest.raises(pretrain_loop.TrainingError, match=r"non-finite .* at step \d+") as info:
    pretrain_loop.run(config, tmp_path)
  bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and saved[-1] == bad_step - 1  # every finite step was kept, the bad one was not saved
  params = _flat(_final_state(tmp_path, saved[-1])["params"])
  assert all(np.isfinite(v).all() for v in params.values())


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused_before_compute(tmp_path, tiny_corpus):
  config = _tiny_config(tiny_corpus, steps=2)
  config.model.vocab_size = 300
  with pytest.raises(DataError, match="vocab"):
    pretrain_loop.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_a_missing_dataset_is_refused_before_compute(tmp_path, tiny_corpus):
  config = _tiny_config(tiny_corpus, steps=2)
  config.data.source = str(tmp_path / "no_such_dataset.jsonl")
  config.data.tokenizer = str(tiny_corpus / "tokenizer.json")
  with pytest.raises(DataError, match="no_such_dataset"):
    pretrain_loop.run(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()
