"""DSpark at the tiny scale (the same as `configs/drafter/dspark.py:tiny`)."""

from dsv4.configs import sibling

_dspark = sibling(__file__, "dspark").get_config


def get_config(arg=None):
  return _dspark(arg or "tiny")
