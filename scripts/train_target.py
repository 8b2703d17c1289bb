"""Pretrain a V4-style target (next-token + MTP loss) on the embedded corpus or any text dataset.

  python scripts/train_target.py --config configs/target/small.py --workdir runs/target-small
  python scripts/train_target.py --config configs/target/tiny.py --workdir runs/t --config.train.steps=100

Re-running the same command resumes from the latest checkpoint in WORKDIR/checkpoints. Ctrl-C or SIGTERM
finishes the current step, saves it and exits with 130 / 143 (every process of a multi-process run). Logs go to
WORKDIR/tensorboard. Multi-process: add --coordinator_address/--num_processes/--process_id (TPU pods and
SLURM are detected). Ends with one JSON line {"step", "loss", "val_loss", "checkpoint", ...}.
"""

import json
import sys

from absl import flags, logging
from ml_collections import config_flags

from dsv4 import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "target config with train/data sections: file.py[:variant]")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard logs and provenance go here")
_START_DISTRIBUTED = cli.multiprocess_flags()
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; use --config=... and --config.<section>.<field>=...")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  from dsv4.parallel import distributed
  from dsv4.training.provenance import provenance
  _START_DISTRIBUTED()
  from dsv4.training import pretrain_loop
  from dsv4.training.interrupts import run_or_exit
  config = _CONFIG.value
  for section in ("model", "train", "data"):
    if section not in config:
      sys.exit(f"error: {_CONFIG.config_filename if hasattr(_CONFIG, 'config_filename') else 'config'} has no "
               f"`{section}` section; target configs for training define model, train and data.")
  result = run_or_exit(lambda: pretrain_loop.run(config, _WORKDIR.value, provenance=provenance()))
  if distributed.is_main():
    print(json.dumps(result))


if __name__ == "__main__":
  cli.run(main)
