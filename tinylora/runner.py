"""`python -m tinylora.runner --home DIR`: the process that starts queued runs in forked workers."""

import argparse
import logging
from pathlib import Path

from .jobs import Runner


def main() -> None:
    parser = argparse.ArgumentParser(description="Start queued tinylora runs in worker processes.")
    parser.add_argument("--home", type=Path, required=True, help="the data directory holding runs.db")
    parser.add_argument("--idle-exit", type=float, default=600.0,
                        help="seconds with nothing queued or running after which the runner exits")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")

    # Import torch and the training code now, so forked workers start warm.
    import torch  # noqa: F401

    from . import training  # noqa: F401

    Runner(args.home, idle_exit=args.idle_exit).run_forever()


if __name__ == "__main__":
    main()
