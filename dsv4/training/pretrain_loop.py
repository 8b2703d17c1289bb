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
from jax.experimental import multihost_utils

from dsv4.configs import model_config
from dsv4.data.corpus import unigram_entropy
from dsv4.errors import ConfigError, TrainingError
from dsv4.model.sharded import init_sharded
from dsv4.parallel.config import mesh_from_config, rules_from_config
from dsv4.parallel.distributed import is_main
from dsv4.parallel.rules import logical_to_spec
from dsv4.training import data_setup, pretrain, train_state
from dsv4.training.checkpointing import TrainCheckpointer
from dsv4.training.optimizer import learning_rate, make_optimizer
from dsv4.training.progress import progress
from dsv4.training.tensorboard import ScalarWriter
from dsv4.training.throughput import compiled_flops, measured_matmul_flops


def _log(msg: str) -> None:
  if is_main():
    print(msg, flush=True)


def check_config(config, n_devices: int) -> None:
  """Config errors before any compute."""
  t, d = config.train, config.data
  for name in ("steps", "batch_size", "checkpoint_every", "eval_every", "log_every", "keep_checkpoints"):
    if int(t[name]) < 1:
      raise ConfigError(f"config.train.{name}: must be ≥ 1 (got {t[name]}).")
  if d.seq_len < 2:
    raise ConfigError(f"config.data.seq_len: must be ≥ 2 (got {d.seq_len}).")
  if t.batch_size % jax.process_count():
    raise ConfigError(f"config.train.batch_size={t.batch_size} does not divide over {jax.process_count()} processes.")


def check_batch(batch_size: int, mesh, rules) -> None:
  axes = logical_to_spec(("batch",), rules)[0] or ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  ways = math.prod(mesh.shape[a] for a in axes)
  if batch_size % ways:
    raise ConfigError(f"config.train.batch_size={batch_size} does not divide over the batch mesh axes {axes} "
                      f"({ways} ways); use a multiple of {ways} or change config.mesh / config.rules.")


def _global_batch(local: dict, shardings: dict) -> dict:
  """Per-process rows → one global array per field (rows of process p are its slice of the batch axis)."""
  return {k: jax.make_array_from_process_local_data(shardings[k], local[k]) for k in pretrain.BATCH_FIELDS}


def _gather_stream_states(stream) -> list[dict]:
  """Every process's stream state (small ints), so process 0 can write them all in the checkpoint."""
  local = stream.get_state()
  cursor = np.asarray([local[k] for k in ("epoch", "index", "offset", "step")], np.int64)
  cursors = np.asarray(multihost_utils.process_allgather(cursor)).reshape(jax.process_count(), 4)
  return [{**local, "process_index": p, **dict(zip(("epoch", "index", "offset", "step"), map(int, c), strict=True))}
          for p, c in enumerate(cursors)]


def evaluate(eval_step, state, stream_factory, batch_shardings, max_batches: int) -> float:
  """Mean next-token CE over the validation stream (pooled over counted positions)."""
  total = count = 0.0
  for i, local in enumerate(stream_factory()):
    if max_batches and i >= max_batches:
      break
    s, n = eval_step(state["params"], state["frozen"], _global_batch(local, batch_shardings))
    total, count = total + float(s), count + float(n)
  return total / max(count, 1.0)


def run(config, workdir: str | Path, provenance: dict | None = None) -> dict:
  """Trains to `config.train.steps` (resuming from WORKDIR/checkpoints); `provenance` (command, commit) goes into
  every checkpoint's metadata."""
  workdir = Path(workdir)
  check_config(config, jax.device_count())
  model_cfg = model_config(config)
  t, d = config.train, config.data
  mesh, rules = mesh_from_config(config), rules_from_config(config)
  check_batch(t.batch_size, mesh, rules)

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
  eval_step = pretrain.make_eval_step(graphdef, t, shardings, batch_sh)

  ckpt = TrainCheckpointer(workdir / "checkpoints", every=t.checkpoint_every, keep=t.keep_checkpoints,
                           async_save=t.async_checkpoints)
  meta = {"config": json.loads(config.to_json()), "tokens_seen": 0, "seconds": 0.0, **(provenance or {})}
  latest = ckpt.latest_step()
  if latest is not None:
    state, data_state, meta = ckpt.restore(train_state.abstract_state(state, shardings))
    stream.set_state(data_state["streams"][jax.process_index()])
    # Keep how the run got here: each resume's command and config (a resume may extend train.steps).
    meta["resumes"] = [*meta.get("resumes", []), {"from_step": latest, **(provenance or {}),
                                                  "train": json.loads(config.train.to_json())}]
    meta["config"] = json.loads(config.to_json())
    _log(f"resuming from {ckpt.directory / str(latest)} (step {latest})")
  start = int(state["step"])

  writer = ScalarWriter(workdir / "tensorboard")
  if start == 0:
    writer.text(0, "config", config.to_json(indent=2))
  peak = measured_matmul_flops(jnp.bfloat16 if model_cfg.dtype == "bfloat16" else jnp.float32)
  compiled = step_flops = None
  last = {"loss": math.nan, "val_loss": None}
  bar = progress(t.steps, initial=start, desc="train_target")
  tokens_seen, seconds = meta["tokens_seen"], meta["seconds"]
  train_seconds = 0.0  # this session's step time
  window_tokens, window_steps, window_start = 0.0, 0, time.perf_counter()
  with jax.set_mesh(mesh):
    for step in range(start, t.steps):
      batch = _global_batch(next(stream), batch_sh)
      if compiled is None:  # compile once, ahead of time, and read XLA's FLOP count off the executable
        compiled = train_step.lower(state, batch).compile()
        step_flops = compiled_flops(compiled)
      tick = time.perf_counter()
      state, metrics = compiled(state, batch)
      metrics = {k: float(v) for k, v in metrics.items()}
      train_seconds += time.perf_counter() - tick
      seconds += time.perf_counter() - tick
      done = step + 1
      if not all(math.isfinite(v) for v in metrics.values()):
        ckpt.wait()
        kept = ckpt.latest_step()
        ckpt.close()
        bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
        raise TrainingError(f"non-finite {bad} at step {done}; stopped without saving it. The last good checkpoint "
                            f"is {'none' if kept is None else ckpt.directory / str(kept)}; lower config.train.lr "
                            "or check the data, then re-run to resume from it.")
      tokens_seen += metrics["tokens"]
      window_tokens += metrics["tokens"]
      window_steps += 1
      last["loss"] = metrics["loss"]
      bar.update(1)
      bar.set_postfix(loss=f"{metrics['loss']:.3f}")
      if done % t.log_every == 0 or done == t.steps:
        elapsed = time.perf_counter() - window_start
        tps = window_tokens / max(elapsed, 1e-9)
        metrics["tokens_per_s"] = tps
        if step_flops:
          metrics["mfu"] = step_flops * (tps / max(metrics["tokens"], 1.0)) / (peak * jax.local_device_count())
        writer.scalars(done, metrics)
        window_tokens, window_steps, window_start = 0.0, 0, time.perf_counter()
      if done % t.eval_every == 0 or done == t.steps:
        # Periodic evaluations may use a prefix of the split; the final one uses all of it.
        last["val_loss"] = evaluate(eval_step, state, val_factory, batch_sh, 0 if done == t.steps else t.eval_batches)
        writer.scalars(done, {"val_loss": last["val_loss"], "val_perplexity": math.exp(min(last["val_loss"], 50))})
        bar.write(f"step {done}: loss {metrics['loss']:.4f}  val_loss {last['val_loss']:.4f}") if is_main() else None
        window_tokens, window_steps, window_start = 0.0, 0, time.perf_counter()  # evaluation is not training
      meta = {**meta, "tokens_seen": tokens_seen, "seconds": seconds, "loss": metrics["loss"],
              "val_loss": last["val_loss"]}
      if done % t.checkpoint_every == 0 or done == t.steps:
        ckpt.save(done, state, {"streams": _gather_stream_states(stream)}, meta, force=done == t.steps)
  bar.close()
  ckpt.wait()
  final = ckpt.latest_step()
  ckpt.close()
  writer.close()
  return {"step": int(state["step"]), "loss": last["loss"], "val_loss": last["val_loss"],
          "checkpoint": str(ckpt.directory / str(final)) if final is not None else None,
          "tokens_seen": tokens_seen, "train_seconds": seconds, "tokens_per_s": tokens_seen / max(seconds, 1e-9),
          "step_flops": step_flops, "matmul_flops_per_device": peak,
          "mfu": step_flops * (t.steps - start) / train_seconds / peak if step_flops and train_seconds else None}


def validation_unigram_entropy(splits, vocab_size: int) -> float:
  return unigram_entropy((np.asarray(ids, np.int64) for ids in splits.validation["ids"]), vocab_size)
