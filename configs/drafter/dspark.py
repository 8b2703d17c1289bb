"""DSpark (parallel block drafter + Markov head + confidence head): `configs/drafter/dspark.py:SCALE`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drafter_scales import config_for  # noqa: E402


def get_config(arg=None):
  return config_for(dict(kind="dspark", markov="markov", confidence_head=True), arg, "dspark.py")
