"""Expert parallelism for the routed experts: tokens travel to the devices that hold their experts and back.

The MoE calls `expert_parallel_moe` when `impl="expert_parallel"` (routing stays outside, as for every path). Inside
one `jax.shard_map` over the whole ambient mesh:

  tokens   the B·T tokens, flattened, split over every mesh axis (the `batch` rule's axes first, then the rest in
           mesh order, so the split refines the batch sharding without moving data); T_l tokens, N_l = T_l·k
           assignments per device. Tokens are padded to a multiple of the device count; padding sends nothing.
  experts  w_gate/w_up/w_down split on dim 0 over the mesh axis the `exp` rule names (n devices, E_l = E/n experts
           each) and whole in D and I: XLA gathers any fsdp/tensor shards of a weight before entry (and reduces
           its gradient back), so every device runs complete experts.
  dispatch each device packs, per expert-axis peer p, a buffer of C slots: the assignments whose expert lives on p
           (expert // E_l == p), in flat order (token t, then top-k slot j), first come first served. One
           `all_to_all` over the expert axis swaps the [n, C, D] buffers (with the local expert id of each slot),
           the receiver runs its E_l experts over the n·C received rows (empty slots cost no matmuls), a second
           `all_to_all` returns the rows to their slots, and the source combines them with the routing weights.

Buffer size C: dropless (capacity_factor = 0, the default) C = N_l, the worst case of every assignment going to one
peer, so nothing is ever dropped; the buffers cost n·N_l·D memory per device, the expert matmuls only the real rows.
That memory grows with n: fine for tests and small expert axes, too much for n in the tens (use capacity mode).
Capacity mode (capacity_factor = f > 0) C = min(ceil(f·N_l / n), N_l): assignments past the first C for a
(source device, peer) pair are dropped — they contribute 0 to the token's output, as if their routing weight were 0 —
and the global number of dropped assignments is returned (the MoE `sow`s it as nnx.Intermediate `ep_dropped`).

`jax.lax.ragged_all_to_all` would send only the real rows, but XLA:CPU does not implement it (jax 0.10.2:
"HLO opcode `ragged-all-to-all` is not supported by XLA:CPU ThunkEmitter"), so the exchange is the fixed-size
`all_to_all` everywhere. Receivers compute with the tiled grouped matmul of dsv4.kernels.tiled_moe on CPU and
`ragged_dot` elsewhere (as moe_impl="ragged" picks).

Mesh and rules: the mesh is the ambient one (`jax.set_mesh`), read at trace time with
`jax.sharding.get_abstract_mesh()`. The rules are passed in: `plan(n_experts, rules)` reads the `exp` and `batch`
rules from them. The MoE holds the rules of the run (its static `sharding_rules`, set by
dsv4.parallel.sharded.bind_rules when the model is placed on the mesh), so the rules that shard the expert weights
also route the tokens. No mesh, or an expert axis of size 1: `plan` returns None and the MoE runs its local
dropless path instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dsv4 import errors
from dsv4.kernels.tiled_moe import clamped_swiglu, tile_layout, tile_size, tiled_swiglu
from dsv4.parallel.rules import DEFAULT_RULES, logical_to_spec


def _spec_axes(entry) -> tuple[str, ...]:
  return (entry,) if isinstance(entry, str) else tuple(entry or ())


@dataclasses.dataclass(frozen=True)
class Plan:
  mesh: object                 # the ambient (abstract) mesh
  expert_axis: str             # the mesh axis experts are split over
  n: int                       # its size
  token_axes: tuple[str, ...]  # every mesh axis, the batch rule's first: how tokens are split

  @property
  def n_devices(self) -> int:
    return math.prod(self.mesh.shape[a] for a in self.token_axes)


def plan(n_experts: int, rules: Sequence[tuple] | None = None) -> Plan | None:
  """How the ambient mesh splits tokens and experts under `rules` (None: DEFAULT_RULES), or None when there is
  nothing to split (local path)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    return None
  rules = DEFAULT_RULES if rules is None else rules
  sizes = dict(mesh.shape)
  axes = [a for a in _spec_axes(logical_to_spec(("exp",), rules)[0]) if sizes.get(a, 1) > 1]
  if not axes:
    return None
  if len(axes) > 1:
    raise errors.ConfigError(f"expert parallelism: the 'exp' rule splits experts over several mesh axes {axes}; "
                              "it supports one. Override the 'exp' rule to a single axis.")
  axis, n = axes[0], sizes[axes[0]]
  if n_experts % n:
    raise errors.ConfigError(f"expert parallelism: {n_experts} experts do not divide over mesh axis {axis!r} of "
                              f"size {n}; make n_routed_experts a multiple of {n} or shrink the {axis!r} axis.")
  batch = [a for a in _spec_axes(logical_to_spec(("batch",), rules)[0]) if a in sizes]
  return Plan(mesh, axis, n, tuple(batch) + tuple(a for a in mesh.axis_names if a not in batch))


def capacity(n_assign: int, n_peers: int, capacity_factor: float) -> int:
  """Slots per (source, peer) buffer for `n_assign` local assignments: all of them when dropless (factor 0)."""
  if capacity_factor <= 0:
    return n_assign
  return max(1, min(math.ceil(capacity_factor * n_assign / n_peers), n_assign))


def rank_in_group(group_X, n_groups: int):
  """For each element, how many earlier elements (in order) share its group: its slot in that group's buffer."""
  order = jnp.argsort(group_X, stable=True)
  size_G = jnp.bincount(group_X, length=n_groups)
  start_G = jnp.cumsum(size_G) - size_G
  rank_sorted = jnp.arange(group_X.size, dtype=jnp.int32) - start_G[group_X[order]].astype(jnp.int32)
  return jnp.zeros(group_X.shape, jnp.int32).at[order].set(rank_sorted, unique_indices=True)


def local_experts(x_RD, e_R, w_gate, w_up, w_down, limit: float, kernel: str, mean_rows: int):
  """y[r] = expert e_R[r] (of the E_l local ones) on row r; rows with e_R == E_l are empty and give 0.

  `mean_rows` (the expected real rows) sizes the tiles; the static tile count holds all R rows, but the loop
  runs only the tiles of real groups, which the empty group (sorted last) never shares.
  """
  E = w_gate.shape[0]
  R, D = x_RD.shape
  size_E = jnp.bincount(e_R, length=E + 1)[:E].astype(jnp.int32)
  if kernel == "tiled":
    t = tile_size(mean_rows, E)
    src_S, expert_G, row_R, _ = tile_layout(e_R[:, None], E + 1, t)
    used = jnp.sum((size_E + t - 1) // t)
    valid_S = src_S < R
    x_SD = jnp.where(valid_S[:, None], x_RD[jnp.where(valid_S, src_S, 0)], 0)
    y_GtD = tiled_swiglu(x_SD.reshape(-1, t, D), expert_G, used, w_gate, w_up, w_down, limit)
    return y_GtD.reshape(-1, D)[row_R]  # empty rows sit in tiles past `used`: zeros
  if kernel == "ragged_dot":
    order = jnp.argsort(e_R, stable=True)
    x_sorted = x_RD[order]
    h = clamped_swiglu(jax.lax.ragged_dot(x_sorted, w_gate, size_E), jax.lax.ragged_dot(x_sorted, w_up, size_E),
                       limit)
    # Rows past the last group are empty slots; whatever ragged_dot leaves there is masked (and gets no gradient).
    y_sorted = jnp.where((e_R[order] < E)[:, None], jax.lax.ragged_dot(h, w_down, size_E), 0)
    return jnp.zeros_like(y_sorted).at[order].set(y_sorted, unique_indices=True)
  raise ValueError(f"unknown local expert kernel {kernel!r}; use 'tiled' or 'ragged_dot'")


def _exchange(x_TD, w_TK, idx_TK, valid_T, w_gate, w_up, w_down, *, plan: Plan, cap: int, limit: float,
              kernel: str):
  """One device's side of dispatch → local experts → return → combine (runs inside shard_map)."""
  T, K = idx_TK.shape
  N, D, n, E_l = T * K, x_TD.shape[-1], plan.n, w_gate.shape[0]
  flat_e = idx_TK.reshape(-1)
  dest_X = jnp.where(jnp.repeat(valid_T, K), flat_e // E_l, n)  # padding tokens go to no peer
  pos_X = rank_in_group(dest_X, n + 1)
  keep_X = (dest_X < n) & (pos_X < cap)
  slot_X = jnp.where(keep_X, dest_X * cap + pos_X, n * cap)  # n·cap: out of bounds, dropped by the scatter
  src_S = jnp.full((n * cap,), N, jnp.int32).at[slot_X].set(jnp.arange(N, dtype=jnp.int32), mode="drop")
  filled_S = src_S < N
  src_S = jnp.where(filled_S, src_S, 0)
  x_SD = jnp.where(filled_S[:, None], x_TD[src_S // K], 0)
  e_S = jnp.where(filled_S, flat_e[src_S] % E_l, E_l)

  def swap(a):  # buffer p goes to peer p; what comes back is stacked by source
    return jax.lax.all_to_all(a.reshape(n, cap, *a.shape[1:]), plan.expert_axis, 0, 0, tiled=True).reshape(a.shape)

  y_recv = local_experts(swap(x_SD), swap(e_S), w_gate, w_up, w_down, limit, kernel, mean_rows=N)
  y_SD = swap(y_recv)
  y_XD = jnp.where(keep_X[:, None], y_SD[jnp.where(keep_X, slot_X, 0)], 0)
  y_TD = jnp.einsum("tkd,tk->td", y_XD.reshape(T, K, D).astype(jnp.float32), w_TK)
  dropped = jax.lax.psum(jnp.sum((dest_X < n) & ~keep_X, dtype=jnp.int32), plan.token_axes)
  return y_TD, dropped


def expert_parallel_moe(x_TD, w_TK, idx_TK, w_gate, w_up, w_down, *, limit: float, capacity_factor: float = 0.0,
                        kernel: str | None = None, ep_plan: Plan | None = None, rules: Sequence[tuple] | None = None):
  """Routed-expert output [T, D] (fp32) and the global count of dropped assignments (int32; 0 when dropless).

  x_TD [T, D] (compute dtype), w_TK [T, k] fp32 and idx_TK [T, k] int32 from MoE.route; w_gate/w_up [E, D, I],
  w_down [E, I, D] in the compute dtype. Needs an expert-parallel mesh: `ep_plan` or `plan(E, rules)` must not be
  None.
  """
  E = w_gate.shape[0]
  ep_plan = ep_plan or plan(E, rules)
  if ep_plan is None:
    raise errors.ConfigError("expert parallelism needs an ambient mesh (jax.set_mesh) whose expert axis is > 1.")
  kernel = kernel or ("tiled" if jax.default_backend() == "cpu" else "ragged_dot")
  T, K = idx_TK.shape
  pad = -T % ep_plan.n_devices
  valid_T = jnp.arange(T + pad) < T
  if pad:
    x_TD, w_TK, idx_TK = (jnp.pad(a, ((0, pad), (0, 0))) for a in (x_TD, w_TK, idx_TK))
  cap = capacity((T + pad) // ep_plan.n_devices * K, ep_plan.n, capacity_factor)
  tok, exp = P(ep_plan.token_axes), P(ep_plan.expert_axis)
  body = lambda *a: _exchange(*a, plan=ep_plan, cap=cap, limit=limit, kernel=kernel)
  # check_vma=False: the tiled kernel's loop starts from fresh (device-invariant) zeros and carries device-varying
  # rows, which the varying-axes checker rejects. The specs are plain (tokens split, weights split on E only), so
  # the transpose is the classic one: a weight's cotangent is summed over the axes it is replicated on.
  y_TD, dropped = jax.shard_map(body, mesh=ep_plan.mesh, in_specs=(tok, tok, tok, tok, exp, exp, exp),
                                out_specs=(tok, P()), check_vma=False)(x_TD, w_TK, idx_TK, valid_T, w_gate, w_up,
                                                                        w_down)
  return y_TD[:T], dropped
