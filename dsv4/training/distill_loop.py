"""Drafter distillation: the loop behind `scripts/train_drafter.py`.

  target   frozen, loaded by dsv4.io.target (or trained first, saying so) from config.target; its arrays are
           sharded by the same rules as in pretraining (which its expert dispatch follows too) and passed to every
           step as an argument, never checkpointed here
  data     packed rows from config.data (the embedded corpus: teacher forcing on code; a regenerated dataset:
           responses of the target with a response-only mask), anchors drawn per document on the host
  features online (target forward inside the jitted step) or offline (a feature cache built first, saying so)
  state    the drafter's params, its other variables, the optimizer state and the step — all that a checkpoint
           holds, with the data-stream position and, in its metadata, the drafter config and the target's identity
           (dsv4.io.drafter_checkpoint: written here, read by dsv4.load_drafter)

Resuming is re-running the same command. Held-out metrics (τ_prob, α_k, loss terms, calibration) are computed
on `train.eval_batches` fixed validation batches every `train.eval_every` steps and once before training
(τ_prob at initialisation, kept in the checkpoint metadata so a resumed run still reports it).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dsv4.data.anchors import batch_anchors
from dsv4.drafters.build import build_drafter
from dsv4.errors import ConfigError, DataError
from dsv4.io.drafter_checkpoint import drafter_meta
from dsv4.io.target import tokenizer_path
from dsv4.model.moe import EXPERT_IMPLS
from dsv4.parallel.sharded import bind_rules
from dsv4.training import data_setup, distill, feature_cache, train_state
from dsv4.training.checkpointing import TrainCheckpointer
from dsv4.training.distill_config import FEATURE_MODES, drafter_config
from dsv4.training.loop import StepOut, Totals, TrainingError, log, open_run, report, run_steps, stoppable
from dsv4.training.optimizer import check_optimizer, learning_rate, make_optimizer
from dsv4.training.target_source import ensure_target, target_config
from dsv4.training.tensorboard import ScalarWriter
from dsv4.training.workdir import check_reuse, describe_changes, resume_entry

__all__ = ["Data", "TrainingError", "check_config", "evaluate", "run"]


_log = log


def check_config(config) -> None:
  """Config errors before any compute (the drafter config validates itself when built)."""
  t, d = config.train, config.data
  for name in ("steps", "batch_size", "checkpoint_every", "eval_every", "log_every", "keep_checkpoints",
               "eval_batches"):
    if int(t[name]) < 1:
      raise ConfigError(f"config.train.{name}: must be ≥ 1 (got {t[name]}).")
  if not float(t.expert_bias_rate) >= 0:
    raise ConfigError(f"config.train.expert_bias_rate: must be ≥ 0 (the routing-bias step; 0 freezes the biases), "
                      f"got {t.expert_bias_rate}.")
  if t.moe_impl and t.moe_impl not in EXPERT_IMPLS:
    raise ConfigError(f"config.train.moe_impl: {t.moe_impl!r} is not one of {EXPERT_IMPLS} ('' keeps the target's).")
  if t.features not in FEATURE_MODES:
    raise ConfigError(f"config.train.features: must be one of {FEATURE_MODES}, got {t.features!r}.")
  for name in ("num_anchors", "max_blocks"):
    if int(d[name]) < 1:
      raise ConfigError(f"config.data.{name}: must be ≥ 1 (got {d[name]}).")
  if t.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size={t.batch_size} does not divide over {jax.process_count()} processes.")
  check_optimizer(t)
  data_setup.check_data(d)


class Data:
  """This process's rows for each step (with anchors), online from the packed stream or from the cache."""

  def __init__(self, config, splits, target_cfg, feature_names, features_fn, workdir: Path):
    t, d = config.train, config.data
    self.t, self.d = t, d
    self.local_rows = t.batch_size // jax.process_count()
    self.first_row = jax.process_index() * self.local_rows
    self.stream = data_setup.train_stream(splits, d, target_cfg, t.batch_size)
    self.val = list(itertools.islice(data_setup.val_stream(splits, d, target_cfg, t.batch_size),
                                     int(t.eval_batches)))
    if len(self.val) < int(t.eval_batches):  # the validation split runs out: say so, not a bare StopIteration
      raise DataError(
          f"the validation split ({d.val_split!r}) packs into {len(self.val)} batch(es) of {t.batch_size} rows × "
          f"config.data.seq_len={d.seq_len} tokens, fewer than config.train.eval_batches={t.eval_batches}; lower "
          "config.train.eval_batches or config.data.seq_len, or use more validation data.")
    self.cache = self.val_cache = None
    if t.features == "offline":
      root = Path(t.cache_dir) if t.cache_dir else workdir / "features"
      name = f"p{jax.process_index()}"
      n = int(t.cache_batches) or int(t.steps)
      meta = {"target_layer_ids": list(config.drafter.target_layer_ids), "features": list(feature_names)}
      for split, batches, count in (("train", self.stream, n), ("validation", iter(self.val), len(self.val))):
        path = root / split / name
        if not (path / feature_cache.MANIFEST).exists():
          _log(f"building the offline {split} feature cache at {path} ({count} batches)")
          feature_cache.build(path, batches, count, features_fn, t.cache_dtype, meta, log=_log)
      self.cache = feature_cache.FeatureCache(root / "train" / name)
      self.val_cache = feature_cache.FeatureCache(root / "validation" / name)
      if self.cache.manifest.get("target_layer_ids") != meta["target_layer_ids"]:
        raise ConfigError(f"{root}: the feature cache was built for taps {self.cache.manifest.get('target_layer_ids')}"
                          f", not drafter.target_layer_ids={meta['target_layer_ids']}; use another train.cache_dir.")

  def _with_anchors(self, rows: dict, step: int, salt: int = 0) -> dict:
    anchors = batch_anchors(rows, int(self.d.num_anchors), int(self.d.max_blocks), int(self.t.seed) + salt, step,
                            self.first_row)
    return {**rows, "anchor": anchors["anchor"], "keep": anchors["keep"]}

  def train_batch(self, step: int) -> dict:
    rows = self.cache.batch(step) if self.cache is not None else next(self.stream)
    return self._with_anchors(rows, step)

  def val_batches(self):
    for i in range(len(self.val)):
      rows = self.val_cache.batch(i) if self.val_cache is not None else self.val[i]
      yield self._with_anchors(rows, i, salt=1_000_003)

  def state(self) -> dict:
    return {"stream": self.stream.get_state()} if self.cache is None else {"stream": None}

  def restore(self, state: dict) -> None:
    if self.cache is None and state.get("stream") is not None:
      self.stream.set_state(state["stream"])


def _global(local: dict, shardings: dict) -> dict:
  return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def evaluate(eval_step, state, target, data: Data, batch_sh) -> dict:
  sums = [jax.device_get(eval_step(state["params"], state["rest"], target, _global(b, batch_sh)))
          for b in data.val_batches()]
  return distill.pool(sums)


@stoppable
def run(config, workdir: str | Path, provenance: dict | None = None) -> dict:
  """Distils `config.drafter` from `config.target` to `config.train.steps` (resuming from WORKDIR/checkpoints). A
  signal stops it with a checkpoint (`Interrupted`)."""
  workdir = Path(workdir)
  check_config(config)
  dcfg = drafter_config(config)
  t, d = config.train, config.data
  mesh, rules, latest, saved_meta = open_run(config, workdir)
  changes = {}
  if latest is not None:  # refuse another run's workdir before loading the target or writing anything
    # data.tokenizer is filled in below from the target when not given
    changes = check_reuse(saved_meta, config, dcfg.kind, workdir, latest,
                          ignore=() if d.tokenizer else ("data.tokenizer",))

  # the target's positions bound seq_len: read from its config, before loading (or training) it
  data_setup.check_data(d, target_config(config.target).max_position_embeddings,
                        f"the target at {config.target.path}")
  target = bind_rules(ensure_target(config.target, log=_log), rules)  # its expert dispatch follows config.rules
  target_cfg = target.config
  dcfg.check_against_target(target_cfg)
  if not d.tokenizer and tokenizer_path(config.target.path) is not None:
    d.tokenizer = str(tokenizer_path(config.target.path))  # the target's own tokenizer
  splits = data_setup.load_splits(d, target_cfg, log=_log)

  # --- the frozen target, sharded like in pretraining ----------------------------------------------
  tgd, tparams, tfrozen = train_state.split_model(target)
  t_sh = dict(zip(("params", "frozen"), train_state.model_shardings(target, mesh, rules), strict=True))
  target_arrays = {"params": jax.device_put(tparams, t_sh["params"]), "frozen": jax.device_put(tfrozen, t_sh["frozen"])}

  # --- the drafter -----------------------------------------------------------------------------------
  moe_impl = t.moe_impl or None
  drafter = build_drafter(dcfg, distill.drafter_target_config(target_cfg, moe_impl), seed=t.seed, target=target,
                          mesh=mesh, rules=rules)
  del target
  feature_names = tuple(drafter.feature_names)
  graphdef, params, rest = nnx.split(drafter, nnx.Param, ...)
  del drafter
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  optimizer, schedule = make_optimizer(t), learning_rate(t)
  params_abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  shardings = distill.state_shardings(  # born in the rules' shardings (build_drafter)
      jax.tree.map(lambda x: x.sharding, params), jax.tree.map(lambda x: x.sharding, rest), optimizer,
      params_abstract, mesh)
  state = {"params": params, "rest": rest,
           "opt": jax.jit(optimizer.init, out_shardings=shardings["opt"])(params),
           "step": jax.device_put(jnp.zeros((), jnp.int32), shardings["step"])}

  loss_fn = distill.make_loss_fn(graphdef, dcfg, feature_names, tgd, target_cfg, t.features, moe_impl)
  features_fn = jax.jit(lambda target, rows: distill.feature_arrays(tgd, target, rows, dcfg.target_layer_ids,
                                                                      feature_names, moe_impl))
  data = Data(config, splits, target_cfg, feature_names,
              lambda rows: features_fn(target_arrays, {k: jnp.asarray(v) for k, v in rows.items()}), workdir)
  bpt = feature_cache.bytes_per_token(target_cfg.hidden_size, dcfg.num_taps, feature_names, t.cache_dtype,
                                      target_cfg.hc_mult)
  _log(f"bytes per token read by each feature mode: online {bpt['online']}, offline {bpt['offline']} "
       f"({t.features} in use)")

  # --- checkpoints --------------------------------------------------------------------------------
  ckpt = TrainCheckpointer(workdir / "checkpoints", every=t.checkpoint_every, keep=t.keep_checkpoints,
                           async_save=t.async_checkpoints)
  meta = drafter_meta(config, dcfg, config.target.path, target_cfg, provenance)
  if latest is not None:
    abstract = train_state.abstract_state(state, shardings)
    state, data_state, meta = ckpt.restore(abstract)
    data.restore(data_state["processes"][jax.process_index()])
    if changes:  # the history of safe changes; an unchanged re-run is the same run
      meta["resumes"] = [*meta.get("resumes", []), resume_entry(changes, latest, provenance)]
      meta["config"] = json.loads(config.to_json())
    _log(f"resuming from {ckpt.directory / str(latest)} (step {latest})"
         + (f" with {describe_changes(changes)}" if changes else ""))
  start = int(state["step"])

  ranks = {**{k: 2 for k in distill.ROW_FIELDS + distill.BLOCK_FIELDS},
           **({k: distill.FEATURE_FIELDS[k] for k in data.cache.arrays if k in distill.FEATURE_FIELDS}
              if data.cache is not None else {})}
  batch_sh = distill.batch_sharding(mesh, rules, ranks)
  train_step = distill.make_train_step(loss_fn, optimizer, schedule, shardings, t_sh, batch_sh,
                                       expert_bias_rate=float(t.expert_bias_rate))
  eval_step = distill.make_eval_step(loss_fn, (shardings["params"], shardings["rest"]), t_sh, batch_sh)

  writer = ScalarWriter(workdir / "tensorboard")

  def step(state, i):
    batch = _global(data.train_batch(i), batch_sh)
    tick = time.perf_counter()
    state, sums = train_step(state, target_arrays, batch)
    sums = jax.device_get(sums)
    return state, StepOut(distill.pool([sums]), float(sums["tokens"]), time.perf_counter() - tick, record=sums)

  def log_window(done, window, tokens_per_s):
    scalars = distill.pool(window)
    scalars.update(grad_norm=float(window[-1]["grad_norm"]), lr=float(window[-1]["lr"]), tokens_per_s=tokens_per_s)
    writer.scalars(done, {f"train/{k}": v for k, v in scalars.items()})

  def evaluate_at(state, done, metrics):
    held = evaluate(eval_step, state, target_arrays, data, batch_sh)
    writer.scalars(done, {f"val/{k}": v for k, v in held.items()})
    report(f"step {done}: loss {metrics['loss']:.4f}  held-out tau_prob {held['tau_prob']:.4f} "
           f"(init {meta['tau_prob_init']:.4f})")
    return {"tau_prob": held["tau_prob"]}

  with jax.set_mesh(mesh):
    if "tau_prob_init" not in meta:
      init = evaluate(eval_step, state, target_arrays, data, batch_sh)
      meta["tau_prob_init"] = init["tau_prob"]
      writer.scalars(start, {f"val/{k}": v for k, v in init.items()})
      writer.text(0, "config", config.to_json(indent=2))
      _log(f"held-out tau_prob at initialisation: {init['tau_prob']:.4f}")
    totals = Totals(meta["tokens_seen"], meta["seconds"])
    state, meta, last = run_steps(
        train=t, state=state, start=start, ckpt=ckpt, meta=meta, totals=totals, step=step, log_window=log_window,
        evaluate=evaluate_at, data_state=data.state, data_key="processes", desc="train_drafter",
        postfix={"loss": "loss", "tau": "tau_prob"}, eval_keys=("tau_prob",), what="drafter loss")
  final = ckpt.latest_step()
  ckpt.close()
  writer.close()
  if last["tau_prob"] is None:  # nothing left to train: report the checkpoint's held-out figure
    last["tau_prob"] = meta.get("tau_prob")
  return {"step": int(state["step"]), "loss": last["loss"] if start < t.steps else meta.get("loss"),
          "tau_prob": last["tau_prob"], "tau_prob_init": meta["tau_prob_init"],
          "checkpoint": str(ckpt.directory / str(final)) if final is not None else None,
          "features": t.features, "bytes_per_token": bpt[t.features], "tokens_seen": totals.tokens_seen,
          "train_seconds": totals.seconds, "tokens_per_s": totals.tokens_seen / max(totals.seconds, 1e-9),
          "started_by": {k: meta.get(k) for k in ("command", "commit", "commit_dirty")},
          "resumes": meta.get("resumes", [])}
