"""Multi-process start-up: JAX's own multi-controller runtime (`jax.distributed`), nothing home-made.

The multi-process scripts (training, generate, convert_checkpoint) take `--coordinator_address`, `--num_processes`,
`--process_id` as absl flags (`dsv4.cli.multiprocess_flags`), which they pass to `initialize`; `add_flags` gives an
argparse parser the same three (the multi-process test workers). With more than one process they call
`jax.distributed.initialize` (on CPU with gloo collectives, so the same code runs on a laptop). With none given,
clusters that JAX recognises by their environment (Cloud TPU pods, SLURM, ...) are initialised with no arguments;
otherwise the run stays single-process. Only process 0 writes logs (`is_main`).
"""

from __future__ import annotations

import argparse
import os

import jax

# Environment variables by which jax.distributed.initialize() auto-detects its cluster.
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE",
                "JAX_COORDINATOR_ADDRESS")


def add_flags(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("multi-process (jax.distributed)")
  g.add_argument("--coordinator_address", default=None, help="host:port of process 0's coordinator")
  g.add_argument("--num_processes", type=int, default=None, help="total processes (omit on auto-detected clusters)")
  g.add_argument("--process_id", type=int, default=None, help="this process's index in [0, num_processes)")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Starts the multi-controller runtime when asked or detected; returns whether it did. Call before any JAX op."""
  explicit = num_processes is not None and num_processes > 1
  if explicit:
    missing = [n for n, v in (("--coordinator_address", coordinator_address), ("--process_id", process_id))
               if v is None]
    if missing:
      raise ValueError(f"--num_processes={num_processes} also needs {' and '.join(missing)}.")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
  elif not any(v in os.environ for v in _CLUSTER_ENV):
    return False
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return True


def from_args(args: argparse.Namespace) -> bool:
  return initialize(args.coordinator_address, args.num_processes, args.process_id)


def is_main() -> bool:
  """Process 0 writes logs, results and the final JSON line; checkpoints are written collectively."""
  return jax.process_index() == 0
