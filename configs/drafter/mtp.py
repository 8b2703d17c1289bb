"""The target's own MTP module as a drafter, fine-tuned against the target (MTP-γ chains it on its output):
`configs/drafter/mtp.py:SCALE`. The block size stays the scale's γ; `--config.drafter.block_size=1` is MTP-1."""

from dsv4.configs import sibling
from dsv4.drafters.config import MTP

config_for = sibling(__file__, "drafter_scales").config_for


def get_config(arg=None):
  fields = {k: v for k, v in MTP.items() if k != "block_size"} | {"layer_type": "dense"}  # the module is the target's
  return config_for(fields, arg, "mtp.py")
