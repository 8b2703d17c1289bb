"""Parameter counts of a target config, from an abstract build (nothing allocated, so V4-Pro works on a laptop).

  python scripts/model_info.py --config configs/target/v4_pro.py
  python scripts/model_info.py --config configs/target/small.py:bf16 --config.model.num_hidden_layers=4

Prints a table by group (total and active per token), totals with and without MTP, then one JSON line.
"""

import json
import sys

from absl import flags
from ml_collections import config_flags

from dsv4 import cli
from dsv4.configs import model_config
from dsv4.errors import Dsv4Error
from dsv4.model.param_count import count_params, summary

_CONFIG = config_flags.DEFINE_config_file("config", None, "target config: path/to/file.py[:variant]")
flags.mark_flag_as_required("config")


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}; use --config=... and --config.model.<field>=...")
  spec = flags.FLAGS["config"].serialize().partition("=")[2]  # file.py[:variant] as given
  try:
    config = model_config(_CONFIG.value, where=f"{spec}: model")
  except (Dsv4Error, OSError) as e:  # OSError: config_flags could not load the file
    sys.exit(f"error: {e}")
  counts = count_params(config)
  print(summary(counts, config))
  keys = ("total_params", "active_params", "total_params_with_mtp", "active_params_with_mtp",
          "active_params_incl_embedding", "mtp_counted", "breakdown", "active_breakdown", "mtp_breakdown", "frozen")
  print(json.dumps({**{k: counts[k] for k in keys}, "config": spec}))


if __name__ == "__main__":
  cli.run(main)
