"""Time one sweep run one point at a time and again with parallel workers; report the aggregate speed-up.

    python bench/sweep_parallel.py [--points 4] [--epochs 4] [--parallel 2] [--repeats 1]

Each setting runs the same grid (r = 2, 4, 8, ... lora_alpha 8, the reference run's other settings) through
the real job runner in a fresh data directory, with TINYLORA_MAX_RUNS=1 and then TINYLORA_MAX_RUNS=<parallel>.
A run alone may use every core (its worker tunes its own thread count); parallel runs share them. The wall
time runs from queuing the sweep to its dispatcher's end. The script also checks that both settings give the
same accuracies, and appends one JSON line per measurement to bench/results/sweep_parallel.jsonl.
"""

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tinylora import jobs  # noqa: E402
from tinylora.store import RunStore  # noqa: E402
from tinylora.sweep import SweepSpec  # noqa: E402
from tinylora.sweep_store import dispatchers, start_sweep  # noqa: E402


def run_sweep(max_runs: int, points: int, epochs: int) -> tuple[float, dict[int, float], float]:
    """Return (wall seconds, final accuracy per r, summed training seconds of the runs)."""
    home = Path(tempfile.mkdtemp(prefix="tinylora-bench-"))
    os.environ["TINYLORA_MAX_RUNS"] = str(max_runs)  # the runner started below inherits it
    store = RunStore(home)
    spec = SweepSpec.from_dict({"base": {"train": {"epochs": epochs}},
                                "axes": {"r": [2 ** (i + 1) for i in range(points)], "lora_alpha": [8]}})
    start = time.perf_counter()
    record = start_sweep(store, spec)
    try:
        while True:
            runs = dispatchers(store, record.id)
            if runs and not runs[0].active:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
        if runs[0].status != "finished":
            raise RuntimeError(f"the sweep ended {runs[0].status}: {runs[0].message}")
        train = store.list_runs(kind="train", group_id=record.id)
        return wall, {r.config["lora"]["r"]: r.final_acc for r in train}, sum(r.seconds for r in train)
    finally:
        pid = jobs.runner_pid(home)
        if pid:
            os.killpg(pid, signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4, help="grid points (r = 2, 4, 8, ...); default 4")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--parallel", type=int, default=2, help="TINYLORA_MAX_RUNS of the parallel setting")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two settings this many times")
    args = parser.parse_args()

    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    for repeat in range(args.repeats):
        load_before = os.getloadavg()[0]
        sequential, accs_sequential, busy_sequential = run_sweep(1, args.points, args.epochs)
        parallel, accs_parallel, busy_parallel = run_sweep(args.parallel, args.points, args.epochs)
        record = {"points": args.points, "epochs": args.epochs, "parallel": args.parallel, "cpus": os.cpu_count(),
                  "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
                  "sequential_s": round(sequential, 2), "parallel_s": round(parallel, 2),
                  "speedup": round(sequential / parallel, 3), "same_accuracies": accs_sequential == accs_parallel,
                  "train_seconds_sequential": round(busy_sequential, 2),
                  "train_seconds_parallel": round(busy_parallel, 2)}
        with open(results / "sweep_parallel.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[{repeat + 1}/{args.repeats}] {args.points} points x {args.epochs} epochs on {os.cpu_count()} CPUs "
              f"(load {load_before:.1f}): one at a time {sequential:.1f} s, {args.parallel} at a time "
              f"{parallel:.1f} s, speed-up {sequential / parallel:.2f}x, same accuracies: "
              f"{accs_sequential == accs_parallel}")


if __name__ == "__main__":
    main()
