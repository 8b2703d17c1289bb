"""SIGINT and SIGTERM stop training cleanly: the handler only asks; the step finishes, is saved, the save commits,
and the script prints one line and exits 128 + signal. End to end on the tiny target: a run stopped by SIGINT, then
resumed and stopped by SIGTERM, then resumed to the end, holds bit for bit the state of an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dsv4.training.interrupts import Interrupted, StopSignals
from dsv4.training.loop import find_run, gather_process_states
from tests.training.test_train_target import _final_state, _flat

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 24, 2


def test_a_signal_is_a_request_to_stop_and_a_second_one_insists():
  before = signal.getsignal(signal.SIGINT)
  with StopSignals() as stop:
    assert not stop.should_stop(1)
    signal.raise_signal(signal.SIGTERM)  # handled: no exception, no exit
    assert stop.should_stop(2) and stop.signum == signal.SIGTERM
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is before


def test_the_message_names_the_step_and_the_exit_code_the_signal():
  e = Interrupted(7, signal.SIGINT, "/w/checkpoints/7")
  assert str(e) == "stopped at step 7 (SIGINT), checkpoint saved; re-run the same command to resume"
  assert e.exit_code == 130 and Interrupted(3, signal.SIGTERM, "x").exit_code == 143


def test_one_process_gathers_its_own_state_unchanged():
  state = {"epoch": 2, "index": 10 ** 12, "note": "x" * 10_000}  # longer than any fixed buffer
  assert gather_process_states(state) == [state]


def _command(workdir, corpus):
  return [sys.executable, str(REPO / "scripts" / "train_target.py"), "--config", str(REPO / "configs/target/tiny.py"),
          "--workdir", str(workdir), f"--config.data.corpus_dir={corpus}", f"--config.train.steps={STEPS}",
          f"--config.train.checkpoint_every={EVERY}", "--config.train.eval_every=100", "--config.train.eval_batches=1",
          "--config.train.batch_size=8", "--config.train.log_every=1", "--config.data.seq_len=128"]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  env.pop("PYTEST_XDIST_WORKER", None)
  return env


def _steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def interrupt_after(cmd, workdir: Path, past_step: int, sig: int) -> tuple[int, str, int]:
  """Runs `cmd`, sends `sig` once it has saved a checkpoint after `past_step` (so it is in its step loop); returns
  (rc, stderr, step of the newest checkpoint)."""
  proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 900
  saved = lambda: (workdir / "checkpoints").is_dir() and _steps(workdir) and _steps(workdir)[-1] > past_step  # noqa: E731
  while not saved() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.communicate()[1][-3000:]}"
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=600)
  return proc.returncode, err, _steps(workdir)[-1]


@pytest.mark.slow  # four short runs of the tiny target (~10 min on a loaded 2-core machine)
def test_sigint_then_sigterm_save_the_step_reached_and_resuming_equals_an_uninterrupted_run(tmp_path, tiny_corpus):
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  done = subprocess.run(_command(straight, tiny_corpus), env=_env(), capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]

  step = 0
  for sig, rc in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
    past = step
    code, err, step = interrupt_after(_command(stopped, tiny_corpus), stopped, past, sig)
    assert code == rc, err[-3000:]
    assert past + EVERY <= step < STEPS
    last = err.strip().splitlines()[-1]
    assert last == f"stopped at step {step} ({sig.name}), checkpoint saved; re-run the same command to resume"
    assert "Traceback" not in err
    assert not [p for p in (stopped / "checkpoints").iterdir() if "tmp" in p.name]  # the save committed
    meta = json.loads((stopped / "checkpoints" / str(step) / "meta" / "metadata").read_text())
    assert meta["tokens_seen"] > 0

  resumed = subprocess.run(_command(stopped, tiny_corpus), env=_env(), capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming from {stopped.absolute() / 'checkpoints' / str(step)} (step {step})" in resumed.stdout
  a, b = _flat(_final_state(straight, STEPS)), _flat(_final_state(stopped, STEPS))
  assert a.keys() == b.keys()
  for key in a:  # params, routing biases, optimizer moments, step: bit for bit
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_workdir_with_only_an_unfinished_save_says_it_starts_over(tmp_path, capsys):
  (tmp_path / "checkpoints" / "40.orbax-checkpoint-tmp" / "state").mkdir(parents=True)  # what a killed save leaves
  assert find_run(tmp_path / "checkpoints") == (None, None)
  out = capsys.readouterr().out
  assert "holds only an unfinished checkpoint (40.orbax-checkpoint-tmp)" in out and "starting over from step 0" in out
  assert find_run(tmp_path / "nothing") == (None, None) and not (tmp_path / "nothing").exists()
