"""The drafter distillation step: frozen target features → drafter blocks → DSpark loss, jitted with donation.

  feats         online: a frozen target forward inside the step (taps, final-normed hidden, streams on request);
                offline: the same arrays read from the feature cache (dsv4.training.feature_cache)
  blocks        make_blocks at the host-sampled anchors (dsv4.data.anchors)
  target logits head(hidden[anchor + k]): only at the A·G supervised slots, never [B, T, V]
  loss          dspark_losses with the drafter config's weights (dsv4.drafters.losses)
  routing bias  drafters with routed MoE layers (DSpark layer_type="v4": `routed_moes`, `train_logits_and_experts`)
                report each slot's expert ids; after the optimizer update every such layer's bias in `rest` moves
                by DeepSeek's aux-loss-free rule, bias_e += rate · sign(mean_e' load_e' − load_e)
                (dsv4.training.expert_balance, rate = train.expert_bias_rate), load counted over the slots of kept
                blocks (`routing_loads`). Other drafters' `rest` comes back as it went in.

Only the drafter's parameters get gradients; the target's arrays are an argument of the step, not state, so a
drafter checkpoint holds the drafter alone. Metrics of the evaluation step are sums, so a held-out figure pools
exactly over any number of batches (`pool_eval`).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dsv4.drafters import losses as L
from dsv4.drafters.context import FrozenTarget
from dsv4.drafters.features import TargetFeatures, gather_slots, make_blocks
from dsv4.model.layers import DTYPES
from dsv4.parallel.rules import logical_to_spec
from dsv4.training import expert_balance, train_state

ROW_FIELDS = ("tokens", "segment_ids", "positions", "target_mask")
BLOCK_FIELDS = ("anchor", "keep")
FEATURE_FIELDS = {"hidden": 3, "taps": 4, "streams": 4}  # offline cache arrays and their ranks [B, T, ...]
LOSS_TERMS = ("loss", "ce", "l1", "conf", "soft_ce")
N_BINS = 20


def frozen_target(target: dict, target_cfg) -> FrozenTarget:
  """The target's embedding and LM head out of its params pure dict."""
  return FrozenTarget(target["params"]["embed"], target["params"]["lm_head"], DTYPES[target_cfg.dtype])


def online_features(target_graphdef, target: dict, batch: dict, tap_layers: tuple[int, ...],
                    feature_names: tuple[str, ...], moe_impl: str | None = None) -> TargetFeatures:
  """The frozen target's features of a batch of packed rows (a forward whose logits XLA prunes away);
  `moe_impl` overrides the target's expert path (e.g. "expert_parallel" on an expert mesh)."""
  model = nnx.merge(target_graphdef, target["params"], target["frozen"])
  out = model.forward(batch["tokens"], tap_layers=tap_layers if "taps" in feature_names else (), moe_impl=moe_impl,
                      positions_BT=batch["positions"], segment_ids_BT=batch["segment_ids"])
  sg = jax.lax.stop_gradient
  return TargetFeatures(batch["tokens"], batch["positions"], batch["segment_ids"], sg(out.final_hidden_BTD),
                        sg(out.taps_BTLD) if "taps" in feature_names else None,
                        sg(out.streams_BTND) if "streams" in feature_names else None)


def feature_arrays(target_graphdef, target: dict, rows: dict, tap_layers, feature_names, moe_impl=None) -> dict:
  """What the offline cache stores for a batch of rows: {"hidden", "taps"?, "streams"?}."""
  feats = online_features(target_graphdef, target, rows, tap_layers, feature_names, moe_impl)
  out = {"hidden": feats.hidden_BTD, "taps": feats.taps_BTLD, "streams": feats.streams_BTND}
  return {k: v for k, v in out.items() if v is not None}


def offline_features(batch: dict, dtype) -> TargetFeatures:
  """Cached features (stored in the cache dtype) in the compute dtype."""
  get = lambda k: batch[k].astype(dtype) if k in batch else None
  return TargetFeatures(batch["tokens"], batch["positions"], batch["segment_ids"], get("hidden"), get("taps"),
                        get("streams"))


def _outputs(drafter, feats: TargetFeatures, frozen: FrozenTarget, batch: dict, block_size: int):
  blocks = make_blocks(batch["tokens"], batch["segment_ids"], batch["positions"], batch["target_mask"],
                       batch["anchor"], batch["keep"], block_size)
  if hasattr(drafter, "valid_blocks"):  # a drafter that cannot serve some anchors (MTP: a document's first token)
    blocks = drafter.valid_blocks(blocks)
  experts = ()
  if _routed_moes(drafter):
    logits, conf, experts = drafter.train_logits_and_experts(feats, blocks, frozen)
  else:
    logits, conf = drafter.train_logits(feats, blocks, frozen)
  target_logits = frozen.head(gather_slots(feats.hidden_BTD, blocks.anchor_BA, block_size))
  return blocks, logits, conf, target_logits, experts


def drafter_target_config(target_cfg, moe_impl: str | None):
  """The target config a drafter is built against: its MoE layers copy the target's routing conventions, and
  config.train.moe_impl (when set) picks their expert path."""
  return target_cfg.replace(moe_impl=moe_impl) if moe_impl else target_cfg


def _routed_moes(drafter) -> tuple:
  return drafter.routed_moes() if hasattr(drafter, "routed_moes") else ()


def routing_loads(drafter, experts, keep_BA) -> dict:
  """{path of a routed MoE's bias in the drafter's `rest` pure dict: its expert load [E] float32}, for the MoEs of
  `drafter.routed_moes()` and their expert ids `experts` (a tuple of [B, A, G, k], as `train_logits_and_experts`).

  load_e = number of (slot, pick) pairs routed to expert e over every slot of every kept block (keep_BA = 1).
  Padding blocks (keep = 0), which the batched forward routes too, never count: pretraining likewise counts real
  tokens only. A kept block's slots all count, supervised or not (a slot past its document's end or whose label
  is a prompt token has no loss but is routed and runs its experts all the same, as every slot of an inference
  round is), so the bias balances the experts' actual work.
  """
  path_of = {id(node): tuple(path) for path, node in nnx.iter_graph(drafter)}
  loads = {}
  for moe, experts_BAGK in zip(_routed_moes(drafter), experts, strict=True):
    B, A, G, k = experts_BAGK.shape
    counted_BX = jnp.broadcast_to((keep_BA != 0)[..., None], (B, A, G)).reshape(B, A * G).astype(jnp.float32)
    loads[path_of[id(moe)] + ("bias",)] = expert_balance.expert_load(experts_BAGK.reshape(B, A * G, k), counted_BX,
                                                                     moe.n_experts)
  return loads


def update_routing_biases(rest: dict, loads: dict, rate: float) -> dict:
  """`rest` with the bias at each path of `loads` (see `routing_loads`) moved by expert_balance.update_bias at
  `rate`; every other leaf is returned as it came (only the dicts along those paths are rebuilt)."""
  for path, load_E in loads.items():
    bias_E = functools.reduce(operator.getitem, path, rest)
    rest = _with_leaf(rest, path, expert_balance.update_bias(bias_E, load_E, rate))
  return rest


def _with_leaf(tree: dict, path: tuple, value) -> dict:
  head, *tail = path
  return {**tree, head: _with_leaf(tree[head], tuple(tail), value) if tail else value}


def make_loss_fn(graphdef, drafter_cfg, feature_names, target_graphdef, target_cfg, features: str,
                 moe_impl: str | None = None):
  """`(params, rest, target, batch) -> (loss, aux)`; `target` = {"params", "frozen"} pure dicts of the target
  (online mode runs all of it; offline mode reads only its embedding and head). aux = (losses, blocks, logits,
  conf, target_logits); losses["l1_BAG"] is each slot's ‖p_d − p_t‖₁ (for the metrics); for a drafter with
  routed MoE layers losses["expert_load"] holds `routing_loads`. `moe_impl`
  (config.train.moe_impl) overrides the online target's expert path; a drafter's own MoE layers take theirs
  from the config it was built with (`drafter_target_config`)."""
  if features not in ("online", "offline"):
    raise ValueError(f"features must be 'online' or 'offline', got {features!r}.")
  weights, G = L.loss_weights(drafter_cfg), drafter_cfg.block_size

  def loss_fn(params, rest, target, batch):
    drafter = nnx.merge(graphdef, params, rest)
    frozen = frozen_target(target, target_cfg)
    if features == "online":
      feats = online_features(target_graphdef, target, batch, drafter_cfg.target_layer_ids, feature_names,
                              moe_impl)
    else:
      feats = offline_features(batch, DTYPES[target_cfg.dtype])
    blocks, logits, conf, target_logits, experts = _outputs(drafter, feats, frozen, batch, G)
    terms = L.slot_terms(logits, target_logits, blocks.labels_BAG, blocks.valid_BAG)
    out = L.losses_from_terms(terms, blocks.valid_BAG, conf, **weights)
    out["l1_BAG"] = terms["l1"]
    if experts:
      out["expert_load"] = routing_loads(drafter, experts, batch["keep"])
    return out["loss"], (out, blocks, logits, conf, target_logits)

  return loss_fn


def _metric_sums(out, blocks, logits, conf, target_logits) -> dict:
  """Sums that pool exactly over batches: loss terms × weight, per-slot acceptance sums and counts, the sum of
  each block's τ_prob and the block count (`losses.tau_prob_sums`), the confidence calibration gap per bin; with
  routed MoE layers, the batch's expert-load entropy (load_entropy: 1 = balanced) averaged over the layers, and a
  batch count (`pool` averages it over batches)."""
  w = out["weight_sum"]
  sums = {k: out[k] * w for k in LOSS_TERMS}
  l1 = jax.lax.stop_gradient(out["l1_BAG"])
  alpha_G, count_G = L.acceptance_from_l1(l1, blocks.valid_BAG)
  tau_sum, counted = L.tau_prob_sums(l1, blocks.valid_BAG)
  sums.update(weight=w, accept_sum=alpha_G * count_G, accept_count=count_G, tau_sum=tau_sum, blocks=counted)
  if conf is not None:
    target = jnp.clip(1.0 - 0.5 * l1, 0.0, 1.0)
    m = L.supervised_mask(blocks.valid_BAG)
    sums["conf_gap"] = L.calibration_gaps(jax.nn.sigmoid(conf.astype(jnp.float32)), target, m, N_BINS)
    sums["conf_abs"] = jnp.sum(m * jnp.abs(jax.nn.sigmoid(conf.astype(jnp.float32)) - target))
    sums["conf_weight"] = jnp.sum(m)
  loads = out.get("expert_load")
  if loads:
    entropy = jnp.mean(jnp.stack([expert_balance.load_entropy(load_E) for load_E in loads.values()]))
    sums.update(expert_load_entropy_sum=entropy, expert_load_batches=jnp.ones((), jnp.float32))
  return sums


def pool(sums_list) -> dict:
  """Scalars (and per-slot `accept_k`) from summed metrics of one or many batches (numpy); with routed MoE
  layers also `expert_load_entropy`, the mean over batches of each batch's mean over layers."""
  total = {k: np.sum([np.asarray(s[k], np.float64) for s in sums_list], axis=0) for k in sums_list[0]}
  w = max(float(total["weight"]), 1e-12)
  out = {k: float(total[k]) / w for k in LOSS_TERMS}
  alpha = np.where(total["accept_count"] > 0, total["accept_sum"] / np.maximum(total["accept_count"], 1.0), 0.0)
  out["tau_prob"] = L.pooled_tau_prob(total["tau_sum"], total["blocks"])
  out.update({f"accept_{k}": float(a) for k, a in enumerate(alpha)})
  out["blocks"] = float(total["blocks"])
  if "conf_gap" in total:
    cw = max(float(total["conf_weight"]), 1e-12)
    out["conf_ece"] = float(np.sum(np.abs(total["conf_gap"]))) / cw
    out["conf_err"] = float(total["conf_abs"]) / cw
  if "expert_load_batches" in total:
    out["expert_load_entropy"] = float(total["expert_load_entropy_sum"]) / max(float(total["expert_load_batches"]),
                                                                               1.0)
  return out


def state_shardings(params_sh, rest_sh, optimizer, params_abstract, mesh) -> dict:
  """Shardings of the train step's state {"params", "rest", "opt", "step"}: the optimizer's params-shaped
  subtrees like the params, its scalars and the step replicated."""
  return {"params": params_sh, "rest": rest_sh,
          "opt": train_state.optimizer_shardings(optimizer, params_abstract, params_sh, mesh),
          "step": NamedSharding(mesh, P())}


def batch_sharding(mesh, rules, ranks: dict) -> dict:
  """Every batch array (name → rank) is split over the batch mesh axes along its first dimension."""
  spec0 = logical_to_spec(("batch",), rules)[0]
  return {k: NamedSharding(mesh, P(spec0, *([None] * (r - 1)))) for k, r in ranks.items()}


def make_train_step(loss_fn, optimizer, schedule, shardings=None, target_shardings=None, batch_shardings=None,
                    expert_bias_rate: float = 1e-3):
  """`(state, target, batch) -> (state, sums)`, jitted; `state` = {"params", "rest", "opt", "step"} (donated).
  `expert_bias_rate` (config.train.expert_bias_rate) is the routing-bias step of drafters with routed MoE layers."""
  if not expert_bias_rate >= 0:
    raise ValueError(f"config.train.expert_bias_rate must be ≥ 0 (the aux-loss-free routing-bias step; 0 freezes "
                     f"the biases), got {expert_bias_rate}.")
  rate = float(expert_bias_rate)

  def step(state, target, batch):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (_, aux), grads = grad_fn(state["params"], state["rest"], target, batch)
    updates, opt = optimizer.update(grads, state["opt"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    # Then the routing biases, from the loads this step's forward routed (as pretraining does); the ids are
    # integers out of top-k, so no gradient flows through them.
    rest = update_routing_biases(state["rest"], aux[0].get("expert_load", {}), rate)
    sums = _metric_sums(*aux)
    sums.update(grad_norm=optax.tree.norm(grads), lr=schedule(state["step"]),
                tokens=jnp.sum(batch["segment_ids"] != 0))
    return {"params": params, "rest": rest, "opt": opt, "step": state["step"] + 1}, sums

  if shardings is None:
    return jax.jit(step, donate_argnums=0)
  return jax.jit(step, in_shardings=(shardings, target_shardings, batch_shardings), out_shardings=(shardings, None),
                 donate_argnums=0)


def make_eval_step(loss_fn, param_shardings=None, target_shardings=None, batch_shardings=None):
  """`(params, rest, target, batch) -> sums` (see `pool`)."""

  def step(params, rest, target, batch):
    _, aux = loss_fn(params, rest, target, batch)
    return _metric_sums(*aux)

  if param_shardings is None:
    return jax.jit(step)
  return jax.jit(step, in_shardings=(*param_shardings, target_shardings, batch_shardings))
