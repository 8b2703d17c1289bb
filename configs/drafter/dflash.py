"""DFlash = DSpark without sequential or confidence head, CE-only loss: `configs/drafter/dflash.py:SCALE`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drafter_scales import config_for  # noqa: E402

from dsv4.drafters.config import DFLASH  # noqa: E402


def get_config(arg=None):
  return config_for(dict(kind="dspark", **DFLASH), arg, "dflash.py")
