"""One process of the multi-process training test (run by test_multiprocess_train.py, not collected by pytest).

  python multiprocess_train_worker.py --coordinator_address 127.0.0.1:PORT --num_processes 2 --process_id I

Trains the tiny target for STEPS steps on a global data=2 × fsdp=4 mesh spanning both processes. Every
process builds the same global batches but hands JAX only its own rows (`make_array_from_process_local_data`), as
the pretraining loop does; process 0 prints the per-step metrics as one `RESULT {json}` line. The test runs the same
`train_metrics` in one process with 8 devices as the reference. Importing this module sets nothing: the environment
is set in `main` before JAX starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MESH = {"data": 2, "fsdp": 4}
B, T, STEPS = 8, 256, 3
METRICS = ("loss", "ce", "mtp", "grad_norm")


def global_batch(step: int, vocab: int) -> dict[str, np.ndarray]:
  """The same on every process. Row r: one document of T − 5r tokens, or (odd r) two, the second starting at slot
  128 so both see the compressed windows they would alone; segment 0 pads the rest."""
  seg = np.zeros((B, T), np.int32)
  pos = np.zeros((B, T), np.int32)
  for r in range(B):
    for s, (start, n) in enumerate([(0, T - 5 * r)] if r % 2 == 0 else [(0, 80 + r), (128, 110 + r)], 1):
      seg[r, start:start + n], pos[r, start:start + n] = s, np.arange(n)
  tokens = np.where(seg > 0, np.random.default_rng(step).integers(1, vocab, (B, T)), 0).astype(np.int32)
  return {"tokens": tokens, "segment_ids": seg, "positions": pos, "target_mask": (seg > 0).astype(np.int32)}


def local_rows(sharding, shape) -> slice:
  """The rows this process's devices hold; the loop's `_global_batch` assumes process p holds the p-th block."""
  import jax

  rows = sorted({(idx[0].start or 0, idx[0].stop or shape[0])
                 for idx in sharding.addressable_devices_indices_map(shape).values()})
  lo, hi = rows[0][0], rows[-1][1]
  assert all(a[1] == b[0] for a, b in zip(rows[:-1], rows[1:], strict=True)), rows  # one contiguous block
  per = shape[0] // jax.process_count()
  assert (lo, hi) == (per * jax.process_index(), per * (jax.process_index() + 1)), (lo, hi)
  return slice(lo, hi)


def barrier(name: str) -> None:
  """All processes meet here (coordination service, 10 min). Gloo gives a peer only 30 s to join a collective, less
  than one process's compile can lag the other's on a loaded machine: so compile first, meet, then run."""
  import jax

  if jax.process_count() > 1:
    from jax._src import distributed  # the runtime's own barrier (JAX's multiprocess tests use it); no public one

    distributed.global_state.client.wait_at_barrier(name, 600_000)


def sgd(train):
  """make_optimizer's clipping and matrix-only decay, then SGD with momentum. Not AdamW: Adam turns gradients that
  are rounding noise (±1e-11 where the exact value is 0) into ±lr steps whose sign depends on the summation order,
  so gloo's and the in-process all-reduces part by ~1e-4 in the next step's gradient norm; SGD's update is linear in
  the gradient and keeps the difference at rounding size."""
  import jax
  import optax

  from dsv4.training.optimizer import learning_rate

  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
  return optax.chain(optax.clip_by_global_norm(train.clip_norm),
                     optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
                     optax.sgd(learning_rate(train), momentum=0.9))


def train_metrics() -> list[dict]:
  """STEPS pretraining steps of the tiny target (seed 0) on MESH over all devices of all processes."""
  import jax

  from dsv4.configs import load_config, model_config
  from dsv4.model.sharded import init_sharded
  from dsv4.parallel.mesh import make_mesh
  from dsv4.parallel.rules import DEFAULT_RULES
  from dsv4.training import pretrain, train_state
  from dsv4.training.config import train_section
  from dsv4.training.optimizer import learning_rate

  cfg = model_config(load_config(str(ROOT / "configs/target/tiny.py")))
  train = train_section(lr=0.5, warmup_steps=0, steps=10)  # full lr from step 0: steps 2 and 3 see moved parameters
  optimizer = sgd(train)
  mesh = make_mesh(MESH)
  model = init_sharded(cfg, mesh, DEFAULT_RULES, seed=0)  # no cross-process collective in the init
  barrier("init")  # init_state's device_put checks the value across processes: the first gloo collective
  shardings = train_state.state_sharding(model, optimizer, mesh, DEFAULT_RULES)
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  batch_sh = pretrain.batch_sharding(mesh, DEFAULT_RULES)
  step = pretrain.make_train_step(graphdef, optimizer, train, learning_rate(train), shardings, batch_sh)
  rows = local_rows(batch_sh["tokens"], (B, T))
  batches = [{k: jax.make_array_from_process_local_data(batch_sh[k], v[rows], (B, T))
              for k, v in global_batch(i, cfg.vocab_size).items()} for i in range(STEPS)]
  out = []
  with jax.set_mesh(mesh):
    step = step.lower(state, batches[0]).compile()
    barrier("train_step compiled")
    for batch in batches:
      state, metrics = step(state, batch)
      out.append({k: float(metrics[k]) for k in METRICS})
  return out


def main():
  os.environ["JAX_PLATFORMS"] = "cpu"
  # A starved device thread on a loaded 2-core machine can miss XLA's 40 s in-process rendezvous and abort.
  os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=4 "
                             "--xla_cpu_collective_call_terminate_timeout_seconds=600")
  sys.path.insert(0, str(ROOT))
  from dsv4.parallel.distributed import add_flags, from_args, is_main

  p = argparse.ArgumentParser()
  add_flags(p)
  args = p.parse_args()
  assert from_args(args)

  import jax

  jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py sets for the reference
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  metrics = train_metrics()
  if is_main():
    print("RESULT " + json.dumps(metrics), flush=True)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
