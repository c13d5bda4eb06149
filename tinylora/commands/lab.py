"""`python -m tinylora lab`: the reference notebook's experiments, headless, with its tables (or --json)."""

import argparse
import json
import sys

from ..lab import format_lab, run_lab


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2,
                        help="processes that run the six independent trainings side by side; 1 runs them all "
                             "in this process (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads in each worker process, or in this process with --workers 1 "
                             "(default %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")


def run(args: argparse.Namespace) -> int:
    try:
        lab = run_lab(workers=args.workers, threads_per_worker=args.threads)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(lab, indent=2) if args.json else format_lab(lab))
    statuses = [row["status"] for row in lab["methods"]]
    statuses += [lab["adapters"]["status"], lab["forgetting"]["status"], lab["joint"]["status"]]
    return 0 if all(status == "finished" for status in statuses) else 1
