"""DSpark (parallel block drafter + Markov head + confidence head): `configs/drafter/dspark.py:SCALE`."""

from dsv4.configs import sibling

config_for = sibling(__file__, "drafter_scales").config_for


def get_config(arg=None):
  return config_for(dict(kind="dspark", markov="markov", confidence_head=True), arg, "dspark.py")
