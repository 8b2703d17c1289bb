"""DSpark at the tiny scale (the same as `configs/drafter/dspark.py:tiny`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dspark import get_config as _dspark  # noqa: E402


def get_config(arg=None):
  return _dspark(arg or "tiny")
