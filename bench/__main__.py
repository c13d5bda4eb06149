"""`python -m bench`: run the benchmark suite, save its figures as JSON and update BENCHMARKS.md.

Sections (all by default): throughput, two_cores (a step split over two processes, against the reference
at 1 and 2 threads), peak (with the fraction of it each step reaches), profile, memory, accuracy, lab (the wall time of `python -m tinylora lab` against bench/lab_reference.py). Run from the repository root. Timings run at each thread count of `--threads`, because a worker trains
with a fixed count and the reference is compared at the same one.
"""

import argparse
import datetime
import json
import sys
from pathlib import Path

from . import suite, two_cores
from .report import render, write_section

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("throughput", "two_cores", "peak", "profile", "memory", "accuracy", "lab")
# NOTE: the app's click-to-first-chart latency in a real browser is still to come as a section. It goes in as
# one function in bench/suite.py, one name in SECTIONS, and one block in report.render.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, from {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--methods", default=",".join(suite.all_methods()),
                        help="comma-separated methods (default: every method in tinylora.config.METHODS)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions per timing (default 5)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per timed run (default 8)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per fast mode in the accuracy section")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated intra-op thread counts to time at (default %(default)s); the profile, "
                             "memory and accuracy sections use the first")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json",
                        help="where to save the figures as JSON (default %(default)s)")
    parser.add_argument("--merge", type=Path, action="append", default=[],
                        help="a JSON file saved by an earlier run whose sections are added to this run's figures "
                             "(sections run now take precedence); may be repeated")
    parser.add_argument("--write", action="store_true", help="update the generated section of BENCHMARKS.md")
    args = parser.parse_args(argv)

    # An empty --sections runs nothing, which with --merge and --write renders saved figures.
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(suite.all_methods()))
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(suite.all_methods())}")
    if args.reps < 1 or args.epochs < 1 or args.seeds < 1:
        parser.error("--reps, --epochs and --seeds must be at least 1")
    try:
        threads = [int(n) for n in args.threads.split(",") if n.strip()]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        parser.error(f"--threads must list whole numbers >= 1, such as 1,2; got {args.threads!r}")

    modes = suite.DEFAULT_FAST_MODES
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    results = {"date": datetime.date.today().isoformat(), "command": command, "machine": suite.machine(),
               "options": {"reps": args.reps, "epochs": args.epochs, "methods": methods, "threads": threads},
               "provenance": {}}
    for path in args.merge:
        saved = json.loads(path.read_text())
        for key in set(saved) - {"date", "command", "machine", "options", "provenance"}:
            results[key] = saved[key]
        results["provenance"].update(saved.get("provenance", {}))
    provenance = {"command": command, "date": results["date"], "load_average": results["machine"]["load_average"],
                  "environment": results["machine"]["environment"], "options": results["options"]}
    for name in sections:
        results["provenance"][name] = provenance

    # Every contender, the reference included, runs under the allocator settings the fast path uses.
    suite.keep_freed_memory()
    if "throughput" in sections:
        results["throughput"] = {}
        for n in threads:
            print(f"throughput, {n} thread(s)", flush=True)
            with suite.thread_count(n):
                results["throughput"][str(n)] = suite.throughput(methods, args.reps, args.epochs, modes)
    if "peak" in sections:
        results["peak"] = {}
        for n in threads:
            print(f"peak, {n} thread(s)", flush=True)
            with suite.thread_count(n):
                results["peak"][str(n)] = suite.matmul_peak()
        if "throughput" in results:
            results["fraction"] = {n: suite.fraction_of_peak(results["throughput"][n], results["peak"][n]["peak_gflops"])
                                   for n in results["throughput"] if n in results["peak"]}
    if "profile" in sections:
        print("profile", flush=True)
        with suite.thread_count(threads[0]):
            results["profile"] = {c: suite.profile_step("lora", c) for c in suite.contenders(modes)}
    if "memory" in sections:
        print("memory", flush=True)
        results["memory"] = suite.memory(methods, args.epochs, modes, threads[0])
    if "accuracy" in sections:
        print("accuracy", flush=True)
        results["accuracy"] = suite.accuracy(methods, list(range(args.seeds)), modes, threads)

    if "two_cores" in sections:
        print("two cores", flush=True)
        results["two_cores"] = two_cores.two_cores(methods, args.reps, args.epochs)
    if "lab" in sections:
        print("lab", flush=True)
        results["lab"] = suite.lab(args.reps, threads[0])

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    section = render(results)
    print(section)
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
