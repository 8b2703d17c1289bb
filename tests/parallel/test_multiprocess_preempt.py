"""Two processes × 4 CPU devices (jax.distributed, gloo) running scripts/train_target.py on the tiny target:

- SIGTERM to ONE process mid-run (as a scheduler preempting one host): JAX's preemption notifier tells the other,
  both finish the same step, save it together and exit 143 with one line each; re-running the same command resumes,
  and the final state equals an uninterrupted two-process run's bit for bit.
- a different --workdir per process (local disks instead of shared storage): both stop at start-up, in bounded
  time, with a message that the workdir must be storage all hosts share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from dsv4.data.corpus import build_corpus
from dsv4.io.target import restore_model, restore_state_on_one_device
from tests.parallel.test_multiprocess_train import free_port
from tests.training.test_train_target import _flat

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 6, 2


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
  """As tests/training's: 40 files of the embedded corpus, 512-token BPE."""
  out = tmp_path_factory.mktemp("corpus") / "stdlib_v512"
  build_corpus(out, vocab_size=512, max_files=40, log=lambda _: None)
  return out


def _final_state(workdir, step):
  """The saved state, restored onto one device of this process (it was written by 8 devices of 2 processes)."""
  return restore_state_on_one_device(Path(workdir).absolute() / "checkpoints" / str(step) / "state")


def _env():
  # A starved device thread on a loaded machine can miss XLA's 40 s in-process rendezvous.
  flags = "--xla_force_host_platform_device_count=4 --xla_cpu_collective_call_terminate_timeout_seconds=600"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  env.pop("PYTEST_XDIST_WORKER", None)
  return env


def _start(workdirs, corpus, port):
  return [subprocess.Popen(
      [sys.executable, str(REPO / "scripts" / "train_target.py"), "--config", str(REPO / "configs/target/tiny.py"),
       "--workdir", str(workdir), f"--config.data.corpus_dir={corpus}", f"--config.train.steps={STEPS}",
       f"--config.train.checkpoint_every={EVERY}", "--config.train.eval_every=100", "--config.train.eval_batches=1",
       "--config.train.batch_size=8", "--config.train.log_every=1", "--config.data.seq_len=128",
       "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", str(i)],
      env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, workdir in enumerate(workdirs)]


def _finish(procs, timeout=900):
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()


def _run(workdir, corpus):
  procs = _start([workdir, workdir], corpus, free_port())
  logs = _finish(procs)
  assert [p.returncode for p in procs] == [0, 0], "\n".join(err[-3000:] for _, err in logs)
  return logs


@pytest.mark.slow  # three two-process runs
def test_sigterm_to_one_process_stops_both_at_one_saved_step_and_resuming_equals_an_uninterrupted_run(
    tmp_path, tiny_corpus):
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  _run(straight, tiny_corpus)

  procs = _start([stopped, stopped], tiny_corpus, free_port())
  deadline = time.time() + 900
  while not (stopped / "checkpoints" / str(EVERY)).is_dir() and time.time() < deadline:
    assert all(p.poll() is None for p in procs), "\n".join(err[-3000:] for _, err in _finish(procs))
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)
  logs = _finish(procs)
  assert [p.returncode for p in procs] == [143, 143], "\n".join(err[-3000:] for _, err in logs)
  steps = sorted(int(p.name) for p in (stopped / "checkpoints").iterdir() if p.name.isdigit())
  assert not [p for p in (stopped / "checkpoints").iterdir() if "tmp" in p.name]
  assert EVERY <= steps[-1] < STEPS
  for _, err in logs:
    assert err.strip().splitlines()[-1] == (f"stopped at step {steps[-1]} (SIGTERM), checkpoint saved; re-run the "
                                            "same command to resume")
    assert "Traceback" not in err

  logs = _run(stopped, tiny_corpus)
  assert f"resuming from {stopped.absolute() / 'checkpoints' / str(steps[-1])}" in logs[0][0]
  a, b = _flat(_final_state(straight, STEPS)), _flat(_final_state(stopped, STEPS))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)

  # One process exports what two trained: the model restores onto this process whatever topology wrote it.
  model, _, _ = restore_model(straight.absolute() / "checkpoints" / str(STEPS))
  params = _flat({"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))})
  assert params.keys() and params.keys() <= a.keys()
  for key in params:
    np.testing.assert_array_equal(params[key], a[key], err_msg=key)


@pytest.mark.slow  # two processes start and wait out the check's timeout
def test_a_workdir_per_process_is_refused_at_start_up_in_bounded_time(tmp_path, tiny_corpus):
  start = time.time()
  procs = _start([tmp_path / "host0", tmp_path / "host1"], tiny_corpus, free_port())
  logs = _finish(procs, timeout=400)
  assert time.time() - start < 400
  assert [p.returncode for p in procs] == [1, 1], "\n".join(err[-3000:] for _, err in logs)
  for _, err in logs:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "storage all hosts share" in errors[0] and "[1]" in errors[0], err[-3000:]
    assert "Traceback" not in err
  assert not (tmp_path / "host0" / "checkpoints").exists() and not (tmp_path / "host1" / "checkpoints").exists()
