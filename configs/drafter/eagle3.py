"""EAGLE-3 (one causal layer over embed + fused taps, training-time test over γ steps, soft-label CE):
`configs/drafter/eagle3.py:SCALE`."""

from dsv4.configs import sibling
from dsv4.drafters.config import EAGLE3

config_for = sibling(__file__, "drafter_scales").config_for


def get_config(arg=None):
  return config_for(dict(EAGLE3, layer_type="dense"), arg, "eagle3.py")
