"""One process of the multi-process test (run by test_multiprocess.py, not collected by pytest).

  python multiprocess_worker.py --coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I --out F

Builds the tiny target born sharded on a global data=2 × fsdp=2 × expert=2 mesh spanning both processes, runs
the sharded forward on a fixed batch, gathers the logits and (process 0) saves them to F.
"""

import argparse
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dsv4.parallel.distributed import add_flags, from_args, is_main  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  add_flags(p)
  p.add_argument("--out", required=True)
  args = p.parse_args()
  assert from_args(args)

  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from dsv4.configs import load_config, model_config
  from dsv4.model.sharded import init_sharded
  from dsv4.parallel.forward import jit_forward_sharded
  from dsv4.parallel.mesh import make_mesh
  from dsv4.parallel.rules import DEFAULT_RULES

  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  cfg = model_config(load_config(str(Path(__file__).resolve().parents[2] / "configs/target/tiny.py")))
  mesh = make_mesh({"data": 2, "fsdp": 2, "expert": 2, "tensor": 1})
  model = init_sharded(cfg, mesh, DEFAULT_RULES, seed=0)
  ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, 160)).astype(np.int32)  # same on every process
  logits = jit_forward_sharded(model, mesh, DEFAULT_RULES)(ids).logits_BTV
  full = multihost_utils.process_allgather(logits, tiled=True)
  if is_main():
    np.save(args.out, np.asarray(full))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
