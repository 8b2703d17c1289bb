"""The data pipeline's error type, DataError: now defined in dsv4.errors with the package's others."""

from dsv4.errors import DataError  # noqa: F401  (the old import path)
