"""`python -m tinylora lab`: the reference notebook's experiments, headless, with its tables (or --json)."""

import argparse
import json
import os
import sys

from ..lab import format_lab, run_lab


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2,
                        help="processes that run the six independent trainings side by side; 1 runs them all "
                             "in this process with torch's default thread count (default %(default)s)")
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="torch threads in each worker process when --workers > 1 (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")


def run(args: argparse.Namespace) -> int:
    if args.workers < 1 or args.workers > (os.cpu_count() or 1) * 4:
        print(f"error: --workers must be between 1 and {(os.cpu_count() or 1) * 4}, got {args.workers}", file=sys.stderr)
        return 2
    if args.threads_per_worker < 1:
        print(f"error: --threads-per-worker must be at least 1, got {args.threads_per_worker}", file=sys.stderr)
        return 2
    lab = run_lab(workers=args.workers, threads_per_worker=args.threads_per_worker)
    print(json.dumps(lab, indent=2) if args.json else format_lab(lab))
    statuses = [row["status"] for row in lab["methods"]]
    statuses += [lab["adapters"]["status"], lab["forgetting"]["status"], lab["joint"]["status"]]
    return 0 if all(status == "finished" for status in statuses) else 1
