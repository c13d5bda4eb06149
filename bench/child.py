"""`python -m bench.child METHOD CONTENDER EPOCHS [THREADS]`: train once in a fresh process and print its memory as JSON.

CONTENDER is "reference", "tinylora fast=MODE", or "idle" (import and build the model, no training). The output
has the process's peak resident set size (`peak_rss_bytes`), the resident size after importing torch and the
peak after that (`rss_before_bytes`, `peak_during_bytes`), all from Linux's VmRSS and VmHWM.

getrusage's ru_maxrss is not used: after fork and exec it still counts the parent's size at the fork, so a
child of the large benchmark process would report the parent's peak.
"""

import json
import sys

from .runs import run_config, run_reference, run_tinylora
from .suite import REFERENCE


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset VmHWM, the peak resident size Linux tracks, to the current size (writing 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    method, contender, epochs = argv[0], argv[1], int(argv[2])
    import torch  # imported before the reset so that the library's own size is not counted

    if len(argv) > 3:
        torch.set_num_threads(int(argv[3]))

    import_peak = _status_bytes("VmHWM")
    rss_before = _status_bytes("VmRSS")
    reset = _reset_peak()
    if contender == REFERENCE:
        run_reference(method, epochs=epochs)
    elif contender == "idle":
        from tinylora.methods import build_model

        build_model(run_config(method))
    elif contender.startswith("tinylora fast="):
        run_tinylora(run_config(method, fast=contender.split("=", 1)[1], epochs=epochs))
    else:
        raise ValueError(f"unknown contender {contender!r}; use 'reference', 'idle' or 'tinylora fast=MODE'")
    peak = _status_bytes("VmHWM")
    out = {"peak_rss_bytes": max(import_peak, peak)}
    if reset:
        out.update(rss_before_bytes=rss_before, peak_during_bytes=peak)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
