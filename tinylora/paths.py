"""The data directory, under which tinylora keeps cached bases, runs and adapters."""

import os
from pathlib import Path

HOME_VARIABLE = "TINYLORA_HOME"


def data_home() -> Path:
    """Return the data directory: `$TINYLORA_HOME` when set, else `./tinylora-data` (created on first write)."""
    return Path(os.environ.get(HOME_VARIABLE) or "tinylora-data")
