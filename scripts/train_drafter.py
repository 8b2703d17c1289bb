"""Distil a drafter (DSpark, DFlash, EAGLE-3, MTP) from a frozen V4-style target.

  python scripts/train_drafter.py --config configs/drafter/dspark_small.py --workdir runs/dspark-small
  python scripts/train_drafter.py --config configs/drafter/dspark.py:tiny --workdir runs/dspark-tiny
  python scripts/train_drafter.py --config configs/drafter/dflash.py:small --workdir runs/dflash-small \
      --config.train.features=offline

The target comes from config.target.path (trained there first from config.target.config when absent, e.g. the
tiny target); the data from config.data (the embedded corpus unless told otherwise). Re-running the same
command resumes; Ctrl-C or SIGTERM finishes the current step, saves it and exits with 130 / 143. Logs go
to WORKDIR/tensorboard. Multi-process: add --coordinator_address/--num_processes/
--process_id (TPU pods and SLURM are detected). Ends with one JSON line
{"step", "loss", "tau_prob", "tau_prob_init", "checkpoint", ...} (held-out τ_prob now and at initialisation).
"""

import json
import sys

from absl import flags, logging
from ml_collections import config_flags

from dsv4 import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "drafter config (configs/drafter/*.py[:scale])")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs and provenance go here")
_RESULTS = flags.DEFINE_string("results", None, "also write DIR/results.md: the held-out curve from the run's "
                               "TensorBoard events and the final JSON")
_START_DISTRIBUTED = cli.multiprocess_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; use --config=... and --config.<section>.<field>=...")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from dsv4.parallel import distributed
  from dsv4.training.provenance import provenance
  _START_DISTRIBUTED()
  from dsv4.training import distill_loop
  from dsv4.training.interrupts import run_or_exit
  config = _CONFIG.value
  for section in ("drafter", "target", "train", "data"):
    if section not in config:
      sys.exit(f"error: the config has no `{section}` section; drafter configs (configs/drafter/*.py) define "
               "drafter, target, train and data.")
  result = run_or_exit(lambda: distill_loop.run(config, _WORKDIR.value, provenance=provenance()))
  if distributed.is_main():
    if _RESULTS.value:
      _write_results(config, result)
    print(json.dumps(result))


def _write_results(config, result):
  from dsv4.training.distill_report import write_run_results
  spec = flags.FLAGS["config"].serialize().partition("=")[2]
  d, t = config.drafter, config.train
  by = result["started_by"]
  commit = f" at commit {by['commit'][:12]}{' (uncommitted changes)' if by['commit_dirty'] else ''}" \
      if by.get("commit") else ""
  intro = (f"Distillation of a {d.kind} drafter (`{spec}`) from the target at `{config.target.path}`, started by "
           f"`{by['command']}`{commit}: "
           f"{result['step']} steps of {t.batch_size} × {config.data.seq_len} tokens with {t.features} target "
           f"features, {result['tokens_seen'] / 1e6:.2f}M tokens in {result['train_seconds'] / 60:.1f} min of step "
           f"time. Held-out τ_prob (γ = {d.block_size}) went from {result['tau_prob_init']:.3f} at initialisation "
           f"to {result['tau_prob']:.3f}. Rows are the held-out evaluations; α_k is slot k's expected acceptance.")
  for r in result.get("resumes", []):  # resumes that changed a safe field (lr, steps, cadence), in order
    changes = ", ".join(f"{f} {a!r} → {b!r}" for f, (a, b) in r["changes"].items())
    intro += f" Resumed at step {r['from_step']} by `{r.get('command')}` with {changes}."
  write_run_results(_RESULTS.value, _WORKDIR.value, result, intro)


if __name__ == "__main__":
  cli.run(main)
