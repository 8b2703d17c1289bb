"""Target pretraining: the loop behind `scripts/train_target.py`.

Every process runs this same function (multi-controller JAX): data is read per process, the state lives sharded on
the mesh, checkpoints are written collectively by orbax, and only process 0 writes TensorBoard logs and prints.
Resuming is re-running the same command: the latest finished checkpoint restores parameters, optimizer state,
routing biases, the step and each process's data-stream position.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dsv4.configs import model_config
from dsv4.data.corpus import unigram_entropy
from dsv4.errors import ConfigError
from dsv4.model.sharded import init_sharded
from dsv4.training import data_setup, pretrain, train_state
from dsv4.training.checkpointing import TrainCheckpointer
from dsv4.training.loop import StepOut, Totals, TrainingError, log, open_run, report, run_steps, stoppable
from dsv4.training.optimizer import check_optimizer, learning_rate, make_optimizer
from dsv4.training.tensorboard import ScalarWriter
from dsv4.training.throughput import compiled_flops, measured_matmul_flops
from dsv4.training.workdir import check_reuse, describe_changes, resume_entry

__all__ = ["TrainingError", "check_config", "evaluate", "run", "validation_unigram_entropy"]


_log = log


def check_config(config, n_devices: int) -> None:
  """Config errors before any data, model or compute."""
  t, d = config.train, config.data
  for name in ("steps", "batch_size", "checkpoint_every", "eval_every", "log_every", "keep_checkpoints"):
    if int(t[name]) < 1:
      raise ConfigError(f"config.train.{name}: must be ≥ 1 (got {t[name]}).")
  check_optimizer(t)
  data_setup.check_data(d, model_config(config).max_position_embeddings, "config.model")
  if t.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size={t.batch_size} does not divide over {jax.process_count()} processes.")


def _global_batch(local: dict, shardings: dict) -> dict:
  """Per-process rows → one global array per field (rows of process p are its slice of the batch axis)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], local[k]) for k in pretrain.BATCH_FIELDS}


def evaluate(eval_step, state, stream_factory, batch_shardings, max_batches: int) -> float:
  """Mean next-token CE over the validation stream (pooled over counted positions).

  The running sums stay on the devices until the pass ends: no host round trip per batch, so the host packs and
  places the next batch while the devices still run this one.
  """
  sums_2 = pretrain.zero_sums()
  for i, local in enumerate(stream_factory()):
    if max_batches and i >= max_batches:
      break
    sums_2 = eval_step(state["params"], state["frozen"], _global_batch(local, batch_shardings), sums_2)
  total, count = (float(x) for x in jax.device_get(sums_2))
  return total / max(count, 1.0)


@stoppable
def run(config, workdir: str | Path, provenance: dict | None = None) -> dict:
  """Trains to `config.train.steps` (resuming from WORKDIR/checkpoints); `provenance` (command, commit) goes into
  every checkpoint's metadata. A signal stops it with a checkpoint (`Interrupted`)."""
  workdir = Path(workdir)
  check_config(config, jax.device_count())
  model_cfg = model_config(config)
  t, d = config.train, config.data
  mesh, rules, latest, saved_meta = open_run(config, workdir)
  changes = {}
  if latest is not None:  # refuse another run's workdir before any compute or write
    changes = check_reuse(saved_meta, config, "target", workdir, latest)

  splits = data_setup.load_splits(d, model_cfg, log=_log)
  stream = data_setup.train_stream(splits, d, model_cfg, t.batch_size)
  val_factory = lambda: data_setup.val_stream(splits, d, model_cfg, t.batch_size)  # noqa: E731

  optimizer, schedule = make_optimizer(t), learning_rate(t)
  model = init_sharded(model_cfg, mesh, rules, seed=t.seed)
  shardings = train_state.state_sharding(model, optimizer, mesh, rules)
  graphdef, state = train_state.init_state(model, optimizer, shardings)
  del model
  batch_sh = pretrain.batch_sharding(mesh, rules)
  train_step = pretrain.make_train_step(graphdef, optimizer, t, schedule, shardings, batch_sh)
  eval_step, place_for_eval = pretrain.make_validation(graphdef, t, shardings, batch_sh, state)

  ckpt = TrainCheckpointer(workdir / "checkpoints", every=t.checkpoint_every, keep=t.keep_checkpoints,
                           async_save=t.async_checkpoints)
  meta = {"config": json.loads(config.to_json()), "tokens_seen": 0, "seconds": 0.0, **(provenance or {})}
  if latest is not None:
    state, data_state, meta = ckpt.restore(train_state.abstract_state(state, shardings))
    stream.set_state(data_state["streams"][jax.process_index()])
    # Keep how the run got here: each resume's command, config and changes (a resume may extend train.steps).
    meta["resumes"] = [*meta.get("resumes", []), {**resume_entry(changes, latest, provenance),
                                                  "train": json.loads(config.train.to_json())}]
    meta["config"] = json.loads(config.to_json())
    _log(f"resuming from {ckpt.directory / str(latest)} (step {latest})"
         + (f" with {describe_changes(changes)}" if changes else ""))
  start = int(state["step"])

  writer = ScalarWriter(workdir / "tensorboard")
  if start == 0:
    writer.text(0, "config", config.to_json(indent=2))
  peak = measured_matmul_flops(jnp.bfloat16 if model_cfg.dtype == "bfloat16" else jnp.float32)
  compiled = {}  # compiled once, ahead of time, to read XLA's FLOP count off the executable

  def step(state, i):
    batch = _global_batch(next(stream), batch_sh)
    if not compiled:
      compiled["step"] = train_step.lower(state, batch).compile()
      compiled["flops"] = compiled_flops(compiled["step"])
    tick = time.perf_counter()
    state, metrics = compiled["step"](state, batch)
    metrics = {k: float(v) for k, v in metrics.items()}
    return state, StepOut(metrics, metrics["tokens"], time.perf_counter() - tick)

  def log_window(done, window, tokens_per_s):
    metrics = {**window[-1], "tokens_per_s": tokens_per_s}
    if compiled.get("flops"):
      metrics["mfu"] = compiled["flops"] * (tokens_per_s / max(metrics["tokens"], 1.0)) / (
          peak * jax.local_device_count())
    writer.scalars(done, metrics)

  def evaluate_at(state, done, metrics):
    # Periodic evaluations may use a prefix of the split; the final one uses all of it.
    params, frozen = place_for_eval(state["params"], state["frozen"])
    val_loss = evaluate(eval_step, {"params": params, "frozen": frozen}, val_factory, batch_sh,
                        0 if done == t.steps else t.eval_batches)
    writer.scalars(done, {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50))})
    report(f"step {done}: loss {metrics['loss']:.4f}  val_loss {val_loss:.4f}")
    return {"val_loss": val_loss}

  totals = Totals(meta["tokens_seen"], meta["seconds"])
  with jax.set_mesh(mesh):
    state, meta, last = run_steps(
        train=t, state=state, start=start, ckpt=ckpt, meta=meta, totals=totals, step=step,
        log_window=log_window, evaluate=evaluate_at, data_state=stream.get_state, data_key="streams",
        desc="train_target", postfix={"loss": "loss"}, eval_keys=("val_loss",))
  final = ckpt.latest_step()
  ckpt.close()
  writer.close()
  step_flops = compiled.get("flops")
  return {"step": int(state["step"]), "loss": last["loss"], "val_loss": last["val_loss"],
          "checkpoint": str(ckpt.directory / str(final)) if final is not None else None,
          "tokens_seen": totals.tokens_seen, "train_seconds": totals.seconds,
          "tokens_per_s": totals.tokens_seen / max(totals.seconds, 1e-9),
          "step_flops": step_flops, "matmul_flops_per_device": peak,
          "mfu": step_flops * totals.session_steps / totals.session_seconds / peak
          if step_flops and totals.session_seconds else None}


def validation_unigram_entropy(splits, vocab_size: int) -> float:
  return unigram_entropy((np.asarray(ids, np.int64) for ids in splits.validation["ids"]), vocab_size)
