"""EAGLE-3 (one causal layer over embed + fused taps, training-time test over γ steps, soft-label CE):
`configs/drafter/eagle3.py:SCALE`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from drafter_scales import config_for  # noqa: E402

from dsv4.drafters.config import EAGLE3  # noqa: E402


def get_config(arg=None):
  return config_for(dict(EAGLE3, layer_type="dense"), arg, "eagle3.py")
