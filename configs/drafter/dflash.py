"""DFlash = DSpark without sequential or confidence head: `configs/drafter/dflash.py:SCALE[,OBJECTIVE]`.

OBJECTIVE is `data` (default): CE on the data tokens, as published; or `target`: the target's distribution with
DSpark's own loss terms (CE 0.1 + L1 0.9), so that DSpark against it isolates the two heads. E.g.
`configs/drafter/dflash.py:small,target`.
"""

from dsv4.configs import sibling
from dsv4.drafters.config import DFLASH_OBJECTIVES
from dsv4.errors import ConfigError

config_for = sibling(__file__, "drafter_scales").config_for


def get_config(arg=None):
  scale, _, objective = (arg or "").partition(",")
  objective = objective or "data"
  if objective not in DFLASH_OBJECTIVES:
    raise ConfigError(f"dflash.py:{arg}: unknown objective {objective!r}; choose one of {tuple(DFLASH_OBJECTIVES)} "
                      "(e.g. dflash.py:small,target).")
  return config_for(dict(kind="dspark", **DFLASH_OBJECTIVES[objective]), scale or None, "dflash.py")
