"""Export a trained target from its workdir as a self-contained directory: weights (safetensors, bf16 by default,
transformers' layout), the tokenizer, and provenance.json (config, command, commit, corpus manifest hash, steps,
tokens, training time, validation cross-entropy of the exported weights and the corpus's unigram entropy).

  python scripts/export_target.py --workdir runs/target-small --out assets/targets/small

Load it with `dsv4.from_pretrained(OUT)` and the tokenizer with `dsv4.data.tokenizer.load_tokenizer(OUT)`.
Ends with one JSON line.
"""

import json
import os
import shutil
import sys
import tempfile
import time

from absl import flags, logging

from dsv4 import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "training workdir (its latest checkpoint is exported)")
_OUT = flags.DEFINE_string("out", None, "output directory (created atomically)")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float16", "float32"], "storage dtype of the weights")
_MAX_MB = flags.DEFINE_float("max_mb", 0.0, "fail if the weights exceed this many MB (0 = no limit)")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace an existing --out")
_RESULTS = flags.DEFINE_string("results", None, "also write DIR/results.md: the run's curves and the export's figures")
_NOTE = flags.DEFINE_string("note", "", "a sentence on how the run went (resumes, extensions), kept in the provenance")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from dsv4.configs import model_config
  from dsv4.errors import Dsv4Error
  from dsv4.io import storage_dtype
  from dsv4.io.hf import save_pretrained
  from dsv4.training import data_setup, target_export

  out = os.path.abspath(_OUT.value)
  if os.path.exists(out) and not _OVERWRITE.value:
    sys.exit(f"error: {out} exists; pass --overwrite to replace it.")
  try:
    step_dir = target_export.latest_checkpoint(_WORKDIR.value)
    model, config, meta = target_export.restore_model(step_dir)
    splits = data_setup.load_splits(config.data, model_config(config))
  except (Dsv4Error, OSError) as e:
    sys.exit(f"error: {e}")
  dtype = jnp.dtype(_DTYPE.value)
  val_checkpoint = target_export.validation_loss(model, config, splits)
  rounded = target_export.round_params(model, dtype)
  val_exported = target_export.validation_loss(rounded, config, splits)
  entropy_train = target_export.split_unigram_entropy(splits.train, model.config.vocab_size)
  entropy_val = target_export.split_unigram_entropy(splits.validation, model.config.vocab_size)

  stored = storage_dtype.with_param_dtype(rounded, dtype)
  # config.json names the tokenizer's own BOS/EOS ids (the model config's defaults need not match them).
  specials = {name: splits.tokenizer.token_to_id(tok) for name, tok in (("bos_token_id", "<|bos|>"),
                                                                        ("eos_token_id", "<|eos|>"))}
  stored.config = stored.config.replace(**{k: v for k, v in specials.items() if v is not None})
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
  try:
    save_pretrained(stored, tmp, overwrite=True)
    weights_bytes = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".safetensors"))
    if _MAX_MB.value and weights_bytes > _MAX_MB.value * 1e6:
      raise SystemExit(f"error: the weights take {weights_bytes / 1e6:.1f} MB > --max_mb={_MAX_MB.value}.")
    splits.tokenizer.save(os.path.join(tmp, "tokenizer.json"))
    manifest = splits.manifest or {}
    provenance = {
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "checkpoint": str(step_dir), "step": int(step_dir.name),
        "command": meta.get("command"), "commit": meta.get("commit"), "commit_dirty": meta.get("commit_dirty"),
        "resumes": meta.get("resumes", []), "note": _NOTE.value,
        "config": meta["config"],
        "corpus": {"source": config.data.source, "manifest_hash": manifest.get("hash"),
                   "python_version": manifest.get("python_version"),
                   "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256")},
        "tokens_seen": meta["tokens_seen"], "train_seconds": meta["seconds"],
        "dtype": _DTYPE.value, "weights_bytes": weights_bytes,
        "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(stored, nnx.Param)))),
        "val_loss_checkpoint_fp32": val_checkpoint, "val_loss": val_exported,
        "unigram_entropy_train": entropy_train, "unigram_entropy_validation": entropy_val,
        "val_loss_over_unigram_entropy": val_exported / entropy_train,
        "val_loss_over_validation_unigram_entropy": val_exported / entropy_val,
    }
    with open(os.path.join(tmp, "provenance.json"), "w") as f:
      json.dump(provenance, f, indent=2)
    if os.path.exists(out):
      shutil.rmtree(out)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  summary = {"out": out, **{k: provenance[k] for k in (
      "step", "tokens_seen", "train_seconds", "weights_bytes", "params", "val_loss", "val_loss_checkpoint_fp32",
      "unigram_entropy_train", "unigram_entropy_validation", "val_loss_over_unigram_entropy",
      "val_loss_over_validation_unigram_entropy")}}
  if _RESULTS.value:
    _write_results(_RESULTS.value, provenance, summary)
  print(json.dumps(summary))


def _write_results(out_dir, provenance, summary):
  """The training curve from the run's TensorBoard events, and the exported model's figures."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

  from dsv4.benchmarking import write_results
  events = EventAccumulator(os.path.join(_WORKDIR.value, "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  scalars = events.Tags()["scalars"]
  val = {e.step: e.value for e in events.Scalars("val_loss")} if "val_loss" in scalars else {}
  series = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("ce", "mtp", "tokens_per_s", "mfu",
                                                                           "expert_load_entropy") if tag in scalars}
  table = ["| step | train CE | MTP CE | val CE | tokens/s | MFU | expert-load entropy |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
  fmt = lambda tag, step, f: f.format(series[tag][step]) if tag in series and step in series[tag] else "—"  # noqa
  for step in sorted(val):
    table.append(f"| {step} | {fmt('ce', step, '{:.3f}')} | {fmt('mtp', step, '{:.3f}')} | {val[step]:.3f} | "
                 f"{fmt('tokens_per_s', step, '{:.0f}')} | {fmt('mfu', step, '{:.3f}')} | "
                 f"{fmt('expert_load_entropy', step, '{:.3f}')} |")
  ratio = provenance["val_loss_over_unigram_entropy"]
  intro = (f"Pretraining of the `small` target on the embedded stdlib corpus, then export to {provenance['dtype']} "
           f"({provenance['weights_bytes'] / 1e6:.1f} MB). Training command: `{provenance['command']}` at commit "
           f"{provenance['commit']}. {provenance['tokens_seen'] / 1e6:.2f}M tokens in "
           f"{provenance['train_seconds'] / 60:.1f} min of step time. The exported weights' validation CE is "
           f"{provenance['val_loss']:.3f} nats = {100 * ratio:.1f}% of the train split's unigram entropy "
           f"({provenance['unigram_entropy_train']:.3f} nats) and "
           f"{100 * provenance['val_loss_over_validation_unigram_entropy']:.1f}% of the validation split's "
           f"({provenance['unigram_entropy_validation']:.3f} nats). Periodic validation rows below read a prefix of "
           "the split; the final row and the exported figure read all of it." +
           (f" {provenance['note']}" if provenance["note"] else ""))
  write_results(out_dir, "scripts/export_target.py", None, intro, table, summary)


if __name__ == "__main__":
  cli.run(main)
