"""Export a trained drafter's parameters (no optimizer state) for shipping, e.g. the demo's drafter:

  python scripts/export_drafter.py --workdir /work/runs/dspark-small --out assets/drafters/small-dspark

Writes a checkpoint step directory that `dsv4.load_drafter` reads (bf16 parameters by default) and
OUT/provenance.json (source step, held-out τ_prob at that step, training and export commits).
"""

import json
import sys
from pathlib import Path

from absl import flags

from dsv4 import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "train_drafter.py workdir (its latest checkpoint) or a step directory")
_OUT = flags.DEFINE_string("out", None, "directory to write, e.g. assets/drafters/small-dspark")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "storage dtype of floating parameters")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "replace OUT if it exists")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  import jax.numpy as jnp

  from dsv4.io.drafter_export import export_drafter
  from dsv4.training.provenance import provenance
  try:
    record = export_drafter(_WORKDIR.value, _OUT.value, dtype=jnp.dtype(_DTYPE.value), provenance=provenance(),
                            overwrite=_OVERWRITE.value)
  except (FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  size = sum(p.stat().st_size for p in Path(_OUT.value).rglob("*") if p.is_file())
  print(json.dumps({**record, "out": _OUT.value, "bytes": size}))


if __name__ == "__main__":
  cli.run(main)
