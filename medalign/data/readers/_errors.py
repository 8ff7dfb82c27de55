"""The readers' internal failure type."""
from __future__ import annotations


class _Bad(Exception):
    """Internal: why a file cannot be used; the public functions add the path and raise DataError."""
