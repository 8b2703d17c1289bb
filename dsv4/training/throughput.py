"""Model-FLOPs utilisation: FLOPs of the compiled step (XLA's own cost analysis) against the machine's measured
matmul throughput (not a datasheet number)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def measured_matmul_flops(dtype=jnp.float32, n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of one n×n×n matmul on the default device (after a warm-up run)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t = time.perf_counter()
  for _ in range(repeats):
    r = f(a)
  r.block_until_ready()
  return 2 * n**3 * repeats / (time.perf_counter() - t)


def compiled_flops(compiled) -> float | None:
  """Total FLOPs XLA counts for one call of a compiled function (None where the backend reports none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 — not every backend implements it
    return None
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None
