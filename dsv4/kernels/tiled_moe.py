"""Expert kernels on plain arrays, shared by the MoE (dsv4.model.moe) and expert dispatch
(dsv4.parallel.expert_parallel): the clamped SwiGLU, and its dropless tiled grouped form.

Tiled layout (megablox-style): the N = T·k assignments sorted by expert are padded per expert to multiples of a
tile of t rows, so every tile belongs to one expert; G = n_tiles(N, E, t) static tiles hold any routing. A loop
runs each used tile's matmuls against its expert's weights. Static shapes, no capacity, nothing dropped.
Nothing here knows about modules, configs or meshes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def clamped_swiglu(gate, up, limit: float):
  """silu(min(gate, limit)) · clip(up, ±limit): V4 clamps the pre-activations of every expert."""
  gate = jnp.minimum(gate, limit)
  up = jnp.clip(up, -limit, limit)
  return jax.nn.silu(gate) * up


def tile_size(n_assign: int, n_experts: int) -> int:
  """Rows per tile for N = `n_assign` assignments over E = `n_experts` experts: static, a power of two in [16, 128].

  Each non-empty group pads up to t − 1 rows, so t follows the mean group size N/E (the largest power of two not
  above it): the static rows G·t < N + E·t + t stay within about 2N once N/E ≥ 16. Below 16 rows a tile's
  matmul is dominated by reading its expert's weights.
  """
  mean = max(n_assign // max(n_experts, 1), 1)
  return int(min(max(16, 1 << (mean.bit_length() - 1)), 128))


def n_tiles(n_assign: int, n_experts: int, tile: int) -> int:
  """Static tile count that holds any routing: each non-empty group (≤ min(E, N) of them) pads < t rows."""
  return -(-(n_assign + min(n_experts, n_assign) * (tile - 1)) // tile)


def tile_layout(idx_TK, n_experts: int, tile: int):
  """Where each of the N = T·k assignments goes in the tiled layout (integer bookkeeping, no gradients).

  Groups sorted by expert start at multiples of `tile`; G = n_tiles(N, E, tile) tiles of `tile` rows (R = G·tile).
  Returns (src_R [R] int32: flat assignment index t·k + j of each row, N for a padding row;
           expert_G [G] int32: the expert of each tile (tiles past the last group get E − 1);
           row_X [N] int32: the row of each assignment (X: the N = T·k (token, expert) pairs);
           used: int32 scalar, the tiles that hold assignments — tiles [used, G) are all padding).
  """
  N, E = idx_TK.size, n_experts
  G = n_tiles(N, E, tile)
  flat_e = idx_TK.reshape(-1).astype(jnp.int32)
  order = jnp.argsort(flat_e, stable=True).astype(jnp.int32)
  sorted_e = flat_e[order]
  size_E = jnp.bincount(flat_e, length=E).astype(jnp.int32)
  padded_E = (size_E + tile - 1) // tile * tile
  end_E = jnp.cumsum(padded_E)
  start_E, pstart_E = jnp.cumsum(size_E) - size_E, end_E - padded_E
  row_sorted = pstart_E[sorted_e] + jnp.arange(N, dtype=jnp.int32) - start_E[sorted_e]
  row_X = jnp.zeros((N,), jnp.int32).at[order].set(row_sorted, unique_indices=True)
  src_R = jnp.full((G * tile,), N, jnp.int32).at[row_sorted].set(order, unique_indices=True)
  # Tile g starts at row g·t; its expert is the number of groups that end at or before that row ([G, E] compares
  # compile and run faster on CPU than searchsorted's loop).
  expert_G = jnp.sum(end_E[None, :] <= jnp.arange(G, dtype=jnp.int32)[:, None] * tile, axis=1, dtype=jnp.int32)
  return src_R, jnp.minimum(expert_G, E - 1), row_X, (end_E[-1] // tile).astype(jnp.int32)


# --- tiled grouped SwiGLU ---------------------------------------------------------------------------------------
# A loop over the used tiles, each a plain [t, D] × [D, I] matmul against its expert's weights read in place. On
# XLA:CPU this beats the batched form (gathering a [G, D, I] copy of the weights per tile: tens of MB of fresh
# memory per call) and skips the all-padding tiles. Autodiff of such a loop would add a full [E, D, I] zero-padded
# weight gradient per tile, so the backward is written out: the same loop, accumulating into the tile's expert.

def _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate, w_up, w_down, limit, save: bool):
  G, t, _ = x_GtD.shape
  I, D = w_down.shape[1:]

  def body(g, carry):
    y_GtD, gate_GtI, up_GtI = carry
    e, x_tD = expert_G[g], x_GtD[g]
    gate_tI, up_tI = x_tD @ w_gate[e], x_tD @ w_up[e]
    y_GtD = y_GtD.at[g].set(clamped_swiglu(gate_tI, up_tI, limit) @ w_down[e])
    if save:
      gate_GtI, up_GtI = gate_GtI.at[g].set(gate_tI), up_GtI.at[g].set(up_tI)
    return y_GtD, gate_GtI, up_GtI

  act = (G, t, I) if save else (0, t, I)
  init = (jnp.zeros((G, t, D), x_GtD.dtype), jnp.zeros(act, x_GtD.dtype), jnp.zeros(act, x_GtD.dtype))
  return jax.lax.fori_loop(0, used, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def tiled_swiglu(x_GtD, expert_G, used, w_gate_EDI, w_up_EDI, w_down_EID, limit):
  """y[g] = clamped_swiglu(x[g] @ w_gate[e], x[g] @ w_up[e]) @ w_down[e], e = expert_G[g], for tiles g < used;
  tiles ≥ used are left zero. Differentiable in x and the weights (limit is a Python float)."""
  return _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate_EDI, w_up_EDI, w_down_EID, limit, save=False)[0]


def _tiled_swiglu_fwd(x_GtD, expert_G, used, w_gate, w_up, w_down, limit):
  y, gate, up = _tiled_swiglu_loop(x_GtD, expert_G, used, w_gate, w_up, w_down, limit, save=True)
  return y, (x_GtD, expert_G, used, w_gate, w_up, w_down, gate, up)


def _tiled_swiglu_bwd(limit, res, dy_GtD):
  x_GtD, expert_G, used, w_gate, w_up, w_down, gate_GtI, up_GtI = res
  acc = jnp.promote_types(w_gate.dtype, jnp.float32)

  def body(g, carry):
    dx_GtD, dwg, dwu, dwd = carry
    e, x_tD, dy_tD = expert_G[g], x_GtD[g], dy_GtD[g]
    h_tI, swiglu_vjp = jax.vjp(lambda a, b: clamped_swiglu(a, b, limit), gate_GtI[g], up_GtI[g])
    dgate_tI, dup_tI = swiglu_vjp((dy_tD @ w_down[e].T).astype(h_tI.dtype))
    dx_GtD = dx_GtD.at[g].set((dgate_tI @ w_gate[e].T + dup_tI @ w_up[e].T).astype(dx_GtD.dtype))
    # Weight gradients accumulate in ≥ fp32 in place (slice, add, write back), one expert's matrices per tile.
    dwg = jax.lax.dynamic_update_index_in_dim(dwg, dwg[e] + jnp.dot(x_tD.T, dgate_tI, preferred_element_type=acc),
                                              e, 0)
    dwu = jax.lax.dynamic_update_index_in_dim(dwu, dwu[e] + jnp.dot(x_tD.T, dup_tI, preferred_element_type=acc),
                                              e, 0)
    dwd = jax.lax.dynamic_update_index_in_dim(dwd, dwd[e] + jnp.dot(h_tI.T, dy_tD, preferred_element_type=acc),
                                              e, 0)
    return dx_GtD, dwg, dwu, dwd

  init = (jnp.zeros_like(x_GtD), jnp.zeros(w_gate.shape, acc), jnp.zeros(w_up.shape, acc),
          jnp.zeros(w_down.shape, acc))
  dx, dwg, dwu, dwd = jax.lax.fori_loop(0, used, body, init)
  return dx, None, None, dwg.astype(w_gate.dtype), dwu.astype(w_up.dtype), dwd.astype(w_down.dtype)


tiled_swiglu.defvjp(_tiled_swiglu_fwd, _tiled_swiglu_bwd)
