"""Does running the lab's six trainings in two processes beat one process with two threads?

Runs `run_lab` alternately in both modes (`--rounds` times each) on this machine and prints each wall time,
the median ratio, and whether both modes computed the same numbers. Usage: python bench/lab_workers.py
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from tinylora.lab import run_lab  # noqa: E402

MODES = {"1 process, 2 threads": {"workers": 1}, "2 processes, 1 thread each": {"workers": 2, "threads_per_worker": 1}}


def numbers(lab: dict) -> str:
    """Return the lab's computed results without its timings, for comparing modes."""
    kept = {key: lab[key] for key in ("adapters", "forgetting", "joint")}
    kept["methods"] = [{k: v for k, v in row.items() if k != "seconds"} for row in lab["methods"]]
    return json.dumps(kept, sort_keys=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    times = {mode: [] for mode in MODES}
    results = {}
    for _ in range(args.rounds):
        for mode, kwargs in MODES.items():
            load = os.getloadavg()[0]
            start = time.perf_counter()
            lab = run_lab(**kwargs)
            times[mode].append(time.perf_counter() - start)
            results[mode] = numbers(lab)
            print(f"{mode:28s} {times[mode][-1]:6.1f} s  (load average before: {load:.1f})", flush=True)
    one, two = (statistics.median(t) for t in times.values())
    print(f"median: {one:.1f} s vs {two:.1f} s; two processes take {two / one:.2f}x the time of one")
    print("same numbers in both modes:", len(set(results.values())) == 1)


if __name__ == "__main__":
    main()
