"""The reference notebook's whole story, run headless: the check a speaker runs before a talk.

`run_lab` trains, with the library's own functions and the notebook's settings:

1. the methods compared: full finetuning, LoRA and QLoRA (int8 base) on `odd_majority`, each with its
   trainable parameters, their share of full finetuning's and the final validation accuracy;
2. one adapter per task (`odd_majority`, `first_lt_last`) over one frozen base, and the adapter x task
   accuracy matrix with the plain base as the last row;
3. forgetting: one adapter trained 6 epochs on A, then 12 on B, with the accuracies after each phase;
4. joint training: one adapter (r=8, lora_alpha=16) for 10 epochs on mixed batches tagged with task ids.

The six training runs are independent and each seeds its own generator, so they can run in separate
processes (`workers`) without changing any number. The torch thread count can change one. Full finetuning
ends at 0.955 with one thread and 0.975 with two (measured with torch 2.13.0 on a 2-core Xeon) because its
weight gradients are summed in another order. Every LoRA run of the lab gives the same numbers with either,
and every mode uses `threads_per_worker` threads, 1 by default.
"""

import concurrent.futures
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

import torch

from .config import METHOD_LABELS, RunConfig
from .experiments import run_adapters
from .forgetting import default_params, run_forgetting
from .training import prepare_run

TASK_A, TASK_B = "odd_majority", "first_lt_last"
LAB_METHODS = ("full", "lora", "qlora-int8")  # the notebook's three (the quant command compares more schemes)


def run_method(method: str) -> dict[str, Any]:
    """Train the default run of `method` and return its row of the methods table."""
    prepared = prepare_run(RunConfig(method=method))
    row = {"method": method, "label": METHOD_LABELS[method]}
    for event in prepared.events():
        if event["type"] == "start":
            row.update(trainable=event["trainable"], total=event["total"])
        elif event["type"] == "end":
            row.update(status=event["status"], val_acc=event["final_acc"], seconds=event["seconds"])
    return row


def run_cross_evaluation() -> dict[str, Any]:
    """Train one adapter per task and return the `matrix` of `run_adapters` with the run's seconds."""
    end = _last(run_adapters({"tasks": [TASK_A, TASK_B]}))
    return {"status": end["status"], "seconds": end["seconds"], **end["summary"]["matrix"]}


def run_forgetting_story(strategy: str) -> dict[str, Any]:
    """Run `strategy` with the notebook's settings, evaluating only at phase ends, and return its summary."""
    params = {**default_params(strategy), "task_a": TASK_A, "task_b": TASK_B, "eval_every": 0}
    end = _last(run_forgetting(params))
    return {"status": end["status"], **end["summary"]}


def _last(events) -> dict:
    event = None
    for event in events:
        pass
    if event is None or event["type"] != "end":
        raise RuntimeError("the experiment ended without an end event")
    return event


# Work items, the longest first so that the workers finish close together: (section, key) -> a function of no
# arguments that returns plain data.
WORK: dict[tuple[str, str], Callable[[], dict[str, Any]]] = {
    ("joint", "joint"): lambda: run_forgetting_story("joint"),
    ("forgetting", "sequential"): lambda: run_forgetting_story("sequential"),
    ("adapters", "matrix"): run_cross_evaluation,
    **{("methods", m): (lambda m=m: run_method(m)) for m in LAB_METHODS},
}


def _run_item(section: str, key: str) -> tuple[str, str, dict[str, Any]]:
    return section, key, WORK[section, key]()


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_lab(workers: int = 2, threads_per_worker: int = 1) -> dict[str, Any]:
    """Run every work item and return the lab's results as one JSON-serialisable dict.

    With `workers` > 1 the items run in that many spawned processes, each limited to `threads_per_worker`
    torch threads. With 1 they run one after another in this process with `threads_per_worker` threads, and
    its previous thread count is restored afterwards.
    """
    if not 1 <= workers <= len(WORK):
        raise ValueError(f"workers must be between 1 and {len(WORK)} (one per training), got {workers}")
    if threads_per_worker < 1:
        raise ValueError(f"threads per worker must be at least 1, got {threads_per_worker}")
    start = time.perf_counter()
    results: dict[tuple[str, str], dict[str, Any]] = {}
    if workers == 1:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads_per_worker)
        try:
            for section, key in WORK:
                results[section, key] = WORK[section, key]()
        finally:
            torch.set_num_threads(previous)
    else:
        # A forked worker starts at once with torch imported, where a spawned one spends more than a second
        # importing it again. But a forked child inherits any OpenMP thread pool of the parent in an unusable
        # state, and a worker with one thread never enters a parallel region, so only it is forked.
        context = multiprocessing.get_context("fork" if threads_per_worker == 1 else "spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                    initargs=(threads_per_worker,)) as pool:
            for section, key, result in pool.map(_run_item, *zip(*WORK)):
                results[section, key] = result
    return assemble(results, workers, time.perf_counter() - start)


def assemble(results: dict[tuple[str, str], dict[str, Any]], workers: int, seconds: float) -> dict[str, Any]:
    """Arrange the work items' results into the lab's sections."""
    methods = [results["methods", m] for m in LAB_METHODS]
    full = next(row for row in methods if row["method"] == "full")
    for row in methods:
        row["share_of_full"] = row["trainable"] / full["trainable"]

    matrix = results["adapters", "matrix"]
    adapters = [name for name in matrix["adapters"] if name is not None]
    diagonal = {name: matrix["acc"][i][matrix["tasks"].index(name)] for i, name in enumerate(matrix["adapters"])
                if name is not None}
    off_diagonal = {f"{name} on {task}": matrix["acc"][i][j] for i, name in enumerate(matrix["adapters"])
                    if name is not None for j, task in enumerate(matrix["tasks"]) if task != name}

    sequential = results["forgetting", "sequential"]
    checkpoints = {c["after"]: c["acc"] for c in sequential["checkpoints"]}
    joint = results["joint", "joint"]
    return {
        "methods": methods,
        "adapters": {"matrix": matrix, "diagonal": diagonal, "off_diagonal": off_diagonal, "names": adapters,
                     "status": matrix["status"]},
        "forgetting": {"task_a": TASK_A, "task_b": TASK_B, "after_a": checkpoints.get("A"),
                       "after_b": checkpoints.get("B"), "lost_a": sequential["lost_a"],
                       "gained_b": sequential["gained_b"], "status": sequential["status"]},
        "joint": {"acc": joint["final"], "trainable": joint["trainable"], "status": joint["status"]},
        "workers": workers,
        "item_seconds": {f"{section}/{key}": result.get("seconds") for (section, key), result in results.items()},
        "seconds": seconds,
    }


def format_lab(lab: dict[str, Any]) -> str:
    """Render the lab's results as the notebook's plain-text tables."""
    lines = ["Methods compared on odd_majority",
             f"{'method':24s}{'trainable':>10s}{'% of full':>11s}{'val acc':>9s}"]
    lines.append("-" * len(lines[-1]))
    for row in lab["methods"]:
        lines.append(f"{row['label']:24s}{row['trainable']:10,d}{100 * row['share_of_full']:10.2f}%"
                     f"{row['val_acc']:9.3f}")

    matrix = lab["adapters"]["matrix"]
    lines += ["", "Cross-evaluation: adapter (row) on task (column)",
              f"{'':20s}" + "".join(f"{task:>15s}" for task in matrix["tasks"])]
    for name, accs in zip(matrix["adapters"], matrix["acc"]):
        label = "base (no adapter)" if name is None else f"adapter {name}"
        lines.append(f"{label:20s}" + "".join(f"{acc:15.3f}" for acc in accs))

    f = lab["forgetting"]
    lines += ["", f"Forgetting: one adapter, {f['task_a']} (A) then {f['task_b']} (B)"]
    for phase in ("after_a", "after_b"):
        acc = f[phase]
        if acc is not None:
            lines.append(f"  after phase {phase[-1].upper()}: acc(A)={acc[f['task_a']]:.3f} "
                         f"acc(B)={acc[f['task_b']]:.3f}")

    j = lab["joint"]
    lines += ["", "Joint training: one adapter, both tasks (task id on [CLS])"]
    lines += [f"  acc on {task}: {acc:.3f}" for task, acc in j["acc"].items()]
    lines += ["", f"lab finished in {lab['seconds']:.1f}s with {lab['workers']} worker process(es)"]
    return "\n".join(lines)
