"""The two-core section: a step split over two processes against the reference at one and two threads.

A worker with one thread splits each step of a run outside a group over two processes (tinylora.split_step),
so on a 2-core machine a run started on the Train page uses both cores. This section measures that default
path against the reference at both of its thread counts.
"""

import statistics

from .runs import SteppedRun
from .suite import REFERENCE, print_rep, run_interleaved, spread

# (name, contender, intra-op threads, step processes); every ratio of this section is against the first two.
SPLIT_CONTENDERS = (("reference, 1 thread", REFERENCE, 1, 1), ("reference, 2 threads", REFERENCE, 2, 1),
                    ("tinylora, 1 process of 1 thread", "tinylora fast=auto", 1, 1),
                    ("tinylora, 2 processes of 1 thread", "tinylora fast=auto", 1, 2))
# A full finetune's default path is the eager one, which the split leaves alone. Its explicit `fused` mode,
# which changes its results (see the accuracy section), is timed as well.
FULL_FUSED = ("tinylora fast=fused (an option), 2 processes of 1 thread", "tinylora fast=fused", 1, 2)


def contenders(method: str) -> tuple:
    return SPLIT_CONTENDERS + ((FULL_FUSED,) if method == "full" else ())


def two_cores(methods: list[str], reps: int, epochs: int) -> dict:
    """Time each method on two cores: the reference at 1 and 2 threads, tinylora in 1 and in 2 processes.

    Unlike `suite.throughput`, each contender trains a whole run before the next starts (in alternating order
    over repetitions).
    Interleaved step by step, the split step took 10.7 to 21 ms from one repetition to the next in one
    measurement, against 9.8 to 10.6 ms run by run.
    """
    references = [name for name, *_ in SPLIT_CONTENDERS[:2]]
    runs = {m: {name: [] for name, *_ in contenders(m)} for m in methods}
    for rep in range(reps):
        for method in methods:
            order = contenders(method) if rep % 2 == 0 else contenders(method)[::-1]
            active = []
            for _, contender, threads, processes in order:
                active.append(SteppedRun(contender, method, epochs, threads, processes))
                run_interleaved(active[-1:])
            for (name, *_), run in zip(order, active):
                runs[method][name].append(run)
            print_rep("two cores", rep, reps, method, runs[method])

    out = {}
    for method, by_name in runs.items():
        step = {name: [statistics.median(r.step_seconds) for r in done] for name, done in by_name.items()}
        run_seconds = {name: [sum(r.step_seconds) + sum(r.eval_seconds) for r in done]
                       for name, done in by_name.items()}
        entry = {}
        for name in by_name:
            entry[name] = {
                "step_ms": spread([s * 1e3 for s in step[name]]),
                "run_seconds": spread(run_seconds[name]),
                "accuracies": by_name[name][0].accuracies,
                # against each reference contender, by its name
                "speedup_steps": {ref: spread([b / s for s, b in zip(step[name], step[ref])]) for ref in references},
                "speedup_run": {ref: spread([b / s for s, b in zip(run_seconds[name], run_seconds[ref])])
                                for ref in references},
            }
        out[method] = entry
    return out
