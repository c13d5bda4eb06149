"""A training run's events as JSON lines in `RunStore.live_path(run_id)`, while the run trains.

The Train page's charts fetch this file over HTTP several times a second (the Streamlit server serves the
directory as a component's static files). A script run per chart update made the browser re-render the page
each time, and on a 2-core machine that took CPU from the training worker. A fetch and a canvas redraw cost
far less. The store stays the record: the worker appends here what it has just stored and removes the file when
the run ends, and a page that cannot read the file draws from the store instead.
"""

import json
import logging
from pathlib import Path

log = logging.getLogger("tinylora.live_log")


class LiveLog:
    """The writer of one run's live file. A write that fails turns the log off, and training goes on."""

    def __init__(self, path: Path):
        self.path = path
        self._file = None
        self._off = False

    def write(self, events: list[dict]) -> None:
        if self._off or not events:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "w", encoding="utf-8")
            # One write of whole lines: a reader that sees part of the last line skips it until it is complete.
            self._file.write("".join(json.dumps(event, separators=(",", ":")) + "\n" for event in events))
            self._file.flush()
        except (OSError, TypeError, ValueError) as error:
            self._off = True
            log.warning("live log %s turned off: %s; pages draw this run from the store", self.path, error)

    def close(self) -> None:
        """Close and remove the file: the run has ended and pages draw it from the store."""
        try:
            if self._file is not None:
                self._file.close()
            self.path.unlink(missing_ok=True)
        except OSError as error:  # a stale file is never read: the page draws an ended run from the store
            log.warning("could not remove the live log %s: %s", self.path, error)
