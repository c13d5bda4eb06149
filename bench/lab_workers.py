"""Does running the lab's six trainings in two processes beat one process with two threads?

Runs `run_lab` alternately in both modes (`--rounds` times each) on this machine and prints each wall time,
the median ratio, and whether both modes computed the same numbers. `--quick` replaces the lab with two
copies of the default LoRA run (128 steps each), which takes seconds instead of minutes on an idle machine.
Usage: python bench/lab_workers.py [--quick] [--rounds N]
"""

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

from tinylora.lab import _init_worker, run_lab, run_method  # noqa: E402

MODES = {"1 process, 2 threads": {"workers": 1, "threads_per_worker": 2},
         "2 processes, 1 thread each": {"workers": 2, "threads_per_worker": 1}}


def numbers(lab: dict) -> str:
    """Return the lab's computed results without its timings, for comparing modes."""
    kept = {key: lab[key] for key in ("adapters", "forgetting", "joint")}
    kept["methods"] = [{k: v for k, v in row.items() if k != "seconds"} for row in lab["methods"]]
    return json.dumps(kept, sort_keys=True)


def two_lora_runs(workers: int = 1, threads_per_worker: int = 1) -> list[dict]:
    """Train the default LoRA run twice: one after the other here, or side by side in `workers` processes."""
    if workers == 1:
        torch.set_num_threads(threads_per_worker)
        return [run_method("lora"), run_method("lora")]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                initargs=(threads_per_worker,)) as pool:
        return list(pool.map(run_method, ["lora", "lora"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="time two default LoRA runs instead of the lab")
    args = parser.parse_args()
    torch.set_num_threads(2)
    times = {mode: [] for mode in MODES}
    results = {}
    for _ in range(args.rounds):
        for mode, kwargs in MODES.items():
            load = os.getloadavg()[0]
            start = time.perf_counter()
            if args.quick:
                runs = two_lora_runs(**kwargs)
                result = json.dumps([row["val_acc"] for row in runs])
            else:
                result = numbers(run_lab(**kwargs))
            times[mode].append(time.perf_counter() - start)
            results[mode] = result
            print(f"{mode:28s} {times[mode][-1]:6.1f} s  (load average before: {load:.1f})", flush=True)
    one, two = (statistics.median(t) for t in times.values())
    print(f"median: {one:.1f} s vs {two:.1f} s; two processes take {two / one:.2f}x the time of one")
    print("same numbers in both modes:", len(set(results.values())) == 1)


if __name__ == "__main__":
    main()
