"""The readers' internal failure type, and one-line reasons for the libraries' exceptions."""
from __future__ import annotations

from PIL import UnidentifiedImageError


class _Bad(Exception):
    """Internal: why a file cannot be used; the public functions add the path and raise DataError."""


def _reason(e: BaseException) -> str:
    """One line: the exception's message with its lines joined (pydicom lists plugins on many)."""
    if isinstance(e, UnidentifiedImageError):
        return "not an image file Pillow can identify"
    text = ""
    for line in (line.strip() for line in str(e).splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text or type(e).__name__
