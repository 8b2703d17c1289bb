"""The target's pretraining step and validation step, jitted with explicit shardings and donation.

loss = CE(next token) + train.mtp_weight · mean_k CE(MTP module k); then the aux-loss-free routing-bias
update (dsv4.training.expert_balance) on the main layers. Metrics are global-batch scalars.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.data.packing import row_loss_weights
from dsv4.model.layers import FrozenState
from dsv4.parallel.rules import logical_to_spec
from dsv4.training import expert_balance
from dsv4.training.losses import lm_losses

BATCH_FIELDS = ("tokens", "segment_ids", "positions", "target_mask")


def batch_sharding(mesh, rules) -> dict:
  spec = logical_to_spec(("batch", "seq"), rules)
  return {k: NamedSharding(mesh, spec) for k in BATCH_FIELDS}


def _forward_losses(graphdef, params, frozen, batch, with_mtp: bool, moe_impl):
  model = nnx.merge(graphdef, params, frozen)
  out = model.forward(batch["tokens"], with_mtp=with_mtp, moe_impl=moe_impl, positions_BT=batch["positions"],
                      segment_ids_BT=batch["segment_ids"])
  return model, out, lm_losses(out, batch["tokens"], batch["segment_ids"], batch["target_mask"])


def make_train_step(graphdef, optimizer, train, schedule, shardings=None, batch_shardings=None):
  """`(state, batch) -> (state, metrics)`, jitted; the input state is donated."""
  mtp_weight = float(train.get("mtp_weight", 0.3))
  rate = float(train.get("expert_bias_rate", 1e-3))
  moe_impl = train.get("moe_impl", None) or None

  def loss_fn(params, frozen, batch):
    model, out, losses = _forward_losses(graphdef, params, frozen, batch, mtp_weight > 0, moe_impl)
    total = losses["ce"] + mtp_weight * losses["mtp"] if "mtp" in losses else losses["ce"]
    return total, (losses, out.experts_LBTK, model)

  def step(state, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (total, (losses, experts_LBTK, model)), grads = grad_fn(state["params"], state["frozen"], batch)
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Routing-bias update on the main layers, from this batch's real (non-padding) tokens.
    weights_BT = (batch["segment_ids"] != 0).astype(jnp.float32)
    entropies, max_loads = [], []
    for layer, experts_BTK in zip(model.layers, experts_LBTK, strict=True):
      load_E = expert_balance.expert_load(experts_BTK, weights_BT, layer.ffn.n_experts)
      entropies.append(expert_balance.load_entropy(load_E))
      max_loads.append(jnp.max(load_E) / jnp.maximum(jnp.mean(load_E), 1.0))
      if not layer.ffn.is_hash:
        layer.ffn.bias[...] = expert_balance.update_bias(layer.ffn.bias[...], load_E, rate)
    frozen = nnx.to_pure_dict(nnx.state(model, FrozenState))
    metrics = {"loss": total, "ce": losses["ce"], "grad_norm": optax.tree.norm(grads),
               "lr": schedule(state["step"]), "tokens": losses["tokens"],
               "expert_load_entropy": jnp.mean(jnp.stack(entropies)),
               "expert_max_load": jnp.max(jnp.stack(max_loads))}
    if "mtp" in losses:
      metrics["mtp"] = losses["mtp"]
    return {"params": params, "frozen": frozen, "opt": opt, "step": state["step"] + 1}, metrics

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, in_shardings=(shardings, batch_shardings), out_shardings=(shardings, None), donate_argnums=0)


def make_eval_step(graphdef, train, shardings=None, batch_shardings=None):
  """`(params, frozen, batch, sums_2) -> sums_2 + [Σ w·CE, Σ w]` for pooling a validation loss over many batches.

  The running sums are threaded through every call rather than returned per batch: each call then depends on the
  previous one, so a pass runs its batches in order. Independent calls may run concurrently on the CPU runtime, and
  two processes that start their collectives in different orders wait on each other for ever.
  """
  moe_impl = train.get("moe_impl", None) or None

  def step(params, frozen, batch, sums_2):
    _, out, losses = _forward_losses(graphdef, params, frozen, batch, False, moe_impl)
    n = jnp.sum(row_loss_weights(batch["segment_ids"], batch["target_mask"], 1))
    return sums_2 + jnp.stack([losses["ce"] * n, n]).astype(sums_2.dtype)

  if shardings is None:
    return jax.jit(step)
  replicated = _replicated(batch_shardings)
  return jax.jit(step, in_shardings=(shardings["params"], shardings["frozen"], batch_shardings, replicated),
                 out_shardings=replicated)


def _replicated(batch_shardings) -> NamedSharding:
  """Every device holds all of it, on the batch's mesh."""
  return NamedSharding(next(iter(batch_shardings.values())).mesh, P())


# Models up to this size validate with replicated weights: gathered once per pass instead of by every eval call.
# Over gloo (CPU, several processes) each FSDP all-gather costs ~20 ms, 76 of them 1.6 s per call on the tiny
# target (experiments/multiprocess_validation); on accelerators it saves the gathers' bandwidth all the same.
EVAL_REPLICATE_MAX_BYTES = 256 << 20


def make_validation(graphdef, train, shardings, batch_shardings, state):
  """(eval_step, place): `place(params, frozen)` puts the weights as `eval_step` takes them, once per pass —
  replicated when they take at most EVAL_REPLICATE_MAX_BYTES, else as training holds them (FSDP)."""
  size = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((state["params"], state["frozen"])))
  if size > EVAL_REPLICATE_MAX_BYTES:
    return make_eval_step(graphdef, train, shardings, batch_shardings), lambda params, frozen: (params, frozen)
  replicated = _replicated(batch_shardings)
  eval_sh = {k: jax.tree.map(lambda _: replicated, shardings[k]) for k in ("params", "frozen")}
  place = jax.jit(lambda params, frozen: (params, frozen), out_shardings=(eval_sh["params"], eval_sh["frozen"]))
  return make_eval_step(graphdef, train, eval_sh, batch_shardings), place


def zero_sums() -> np.ndarray:
  """The starting `sums_2` of a validation pass."""
  return np.zeros(2, np.float32)
