"""Two processes × 4 CPU devices (jax.distributed, gloo, coordinator on 127.0.0.1), each feeding only its half of
the global batch's rows, train the tiny target for 3 steps (SGD with momentum; the worker says why not AdamW) to the
same losses and gradient norms as one process × 8 devices on the same data=2 × fsdp=4 mesh (rel. 1e-5: gloo's
all-reduces may sum in another order)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

from tests.parallel import multiprocess_train_worker as worker

WORKER = Path(worker.__file__).resolve()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def fresh_compiles():
  """This module compiles its programs fresh, bypassing the persistent cache tests/conftest.py sets up: with jax
  0.10.2 on CPU a sharded train step (seen on fsdp=2·expert=2·tensor=2) loaded from that cache deadlocks, its devices
  blocked in different all-reduces, while the freshly compiled executable runs."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()  # the "is the cache used" answer is memoised per process
  yield
  jax.config.update("jax_enable_compilation_cache", enabled)
  compilation_cache.reset_cache()


@pytest.mark.slow
def test_two_processes_train_like_one():
  cmd = [sys.executable, str(WORKER), "--coordinator_address", f"127.0.0.1:{free_port()}", "--num_processes", "2"]
  procs = [subprocess.Popen(cmd + ["--process_id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=900)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  lines = [line for line in logs[0].splitlines() if line.startswith("RESULT ")]
  assert len(lines) == 1, logs[0][-3000:]
  got = json.loads(lines[0].removeprefix("RESULT "))

  want = worker.train_metrics()  # this process: 8 devices
  assert len(got) == len(want) == worker.STEPS
  assert want[-1]["loss"] != want[0]["loss"]  # the steps moved the model
  for i, (g, w) in enumerate(zip(got, want, strict=True)):
    for k in worker.METRICS:
      assert abs(g[k] - w[k]) <= 1e-5 * abs(w[k]), (i, k, g[k], w[k])
