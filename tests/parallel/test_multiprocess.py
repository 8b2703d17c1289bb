"""Two processes × 4 CPU devices (jax.distributed, gloo, coordinator on 127.0.0.1) give the same logits as one
process × 8 devices on the same global mesh shape, seed and batch."""

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsv4.configs import load_config, model_config
from dsv4.model.sharded import init_sharded
from dsv4.parallel.forward import jit_forward_sharded
from dsv4.parallel.mesh import make_mesh
from dsv4.parallel.rules import DEFAULT_RULES

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests/parallel/multiprocess_worker.py"


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # two processes, each compiling the tiny target
def test_two_processes_match_one(tmp_path):
  port, out = free_port(), tmp_path / "logits.npy"
  cmd = [sys.executable, str(WORKER), "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2",
         "--out", str(out)]
  procs = [subprocess.Popen(cmd + ["--process_id", str(i)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  try:
    logs = [p.communicate(timeout=420)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  got = np.load(out)

  cfg = model_config(load_config(str(ROOT / "configs/target/tiny.py")))
  mesh = make_mesh({"data": 2, "fsdp": 2, "expert": 2, "tensor": 1})
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 160)).astype(np.int32)
  want = np.asarray(jit_forward_sharded(init_sharded(cfg, mesh, DEFAULT_RULES, seed=0), mesh, DEFAULT_RULES)(ids)
                    .logits_BTV)
  assert got.shape == want.shape
  np.testing.assert_array_equal(got, want)
