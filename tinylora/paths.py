"""Where tinylora keeps its data: the run database, run files and cached base checkpoints."""

import os
from pathlib import Path

HOME_ENV = "TINYLORA_HOME"
DEFAULT_HOME = "tinylora-data"


def data_home() -> Path:
    """Return the data directory: `$TINYLORA_HOME`, or `./tinylora-data` relative to the working directory."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).resolve()
