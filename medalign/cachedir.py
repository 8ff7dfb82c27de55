"""Where medalign keeps what it can recompute (converted weights, decoded images, content hashes):
$MEDALIGN_CACHE, by default ~/.cache/medalign."""
from __future__ import annotations

import os
from pathlib import Path


def cache_home() -> Path:
    return Path(os.environ.get("MEDALIGN_CACHE") or Path.home() / ".cache" / "medalign")
