"""The one error type of the data pipeline: bad input is reported before any loading or packing work starts."""

from __future__ import annotations


class DataError(ValueError):
  """A data source, dataset column, packing argument or stream state is unusable; the message says what to change."""
