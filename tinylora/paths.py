"""Where tinylora keeps its files: cached bases, runs and adapters live under one data directory."""

import os
from pathlib import Path

HOME_VARIABLE = "TINYLORA_HOME"


def data_home() -> Path:
    """Return the data directory: `$TINYLORA_HOME` when set, else `./tinylora-data` (created on first write)."""
    return Path(os.environ.get(HOME_VARIABLE) or "tinylora-data")
