"""The sweep dispatcher: the "sweep" job that submits a sweep's runs and watches them end.

One dispatcher runs per sweep at a time, in a worker of the job runner, taking no training slot. It reads the
sweep record, skips every (point, seed) that already has a finished or diverged run (a diverged run is a
result: the same config diverges again), and submits the rest as "train" runs in the sweep's group:

- to this machine's runner (`LocalExecutor`), which trains up to `max_runs()` of them at once in worker
  processes, each with its own thread count;
- or to a Ray cluster (`tinylora.ray_executor.RayExecutor`), one Ray task per run, whose events stream back
  into the run store.

Grid and random sweeps know their points up front, so every run is queued at once and the queue shows them.
TPE search requests a few points at a time from Optuna (about as many as there are free slots), because each
proposal learns from the accuracies of the points before it.

A stop request on the dispatcher stops every active run of the sweep, waits for them to end and ends the
dispatcher with status "stopped". Its events: "plan", "submitted", "run_end" and the final "end".
"""

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import jobs
from .capacity import max_runs
from .config import RunConfig
from .store import Run, RunStore
from .sweep import RANGE_AXES, Range, SweepSpec
from .sweep_search import normalize_point, planned_points, point_config, point_from_config, point_key, round_to_axis
from .sweep_store import DONE_STATUSES, existing_runs, load_sweep

log = logging.getLogger("tinylora.sweep")

POLL_SECONDS = 0.2
STOP_WAIT_SECONDS = 120.0  # how long a stopping dispatcher waits for its runs to end


class LocalExecutor:
    """Queues runs for this machine's runner."""

    name = "local"

    def __init__(self, store: RunStore, group_id: str, owner: str):
        self.store, self.group_id, self.owner = store, group_id, owner

    def slots(self) -> int:
        return max_runs()

    def submit(self, config: RunConfig) -> str:
        return jobs.submit(self.store, "train", config.to_dict(), owner=self.owner, group_id=self.group_id)

    def poll(self) -> None:
        """Nothing to do: the runner's workers read stop requests from the store themselves."""

    def close(self) -> None:
        pass


def make_executor(spec: SweepSpec, store: RunStore, group_id: str, owner: str):
    if spec.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(store, spec.ray_address, group_id, owner)
    return LocalExecutor(store, group_id, owner)


@dataclass
class PointState:
    """One point of the sweep and its runs, one per seed."""

    point: dict[str, Any]
    seeds: tuple[int, ...]
    runs: dict[int, Run] = field(default_factory=dict)  # seed -> the run that counts for it
    trial: Any = None  # the Optuna trial that proposed the point (TPE only)

    def missing_seeds(self) -> list[int]:
        return [s for s in self.seeds if s not in self.runs or self.runs[s].status not in DONE_STATUSES]

    def mean_acc(self) -> float | None:
        accs = [r.final_acc for r in self.runs.values() if r.status == "finished" and r.final_acc is not None]
        return sum(accs) / len(accs) if accs else None


class Dispatcher:
    """The state of one dispatcher run: its points, the runs it watches and the executor it submits to."""

    def __init__(self, store: RunStore, spec: SweepSpec, sweep_id: str, executor, should_stop):
        self.store, self.spec, self.sweep_id = store, spec, sweep_id
        self.executor = executor
        self.should_stop = should_stop
        self.points: dict[str, PointState] = {}
        self.watching: dict[str, tuple[str, int]] = {}  # run id -> (point key, seed)
        self.previous = existing_runs(store, spec, sweep_id)
        self.started = time.monotonic()

    # Submitting

    def add_point(self, point: dict[str, Any], trial: Any = None) -> PointState:
        key = point_key(point)
        state = self.points.get(key)
        if state is None:
            state = self.points[key] = PointState(point, self.spec.seeds, trial=trial)
            for seed in self.spec.seeds:
                run = self.previous.get(point_key(point, seed))
                if run is not None:
                    state.runs[seed] = run
        return state

    def submit_missing(self, state: PointState) -> Iterator[dict]:
        """Submit the point's seeds that have no result yet; adopt local runs that are still active."""
        key = point_key(state.point)
        for seed in state.missing_seeds():
            run = state.runs.get(seed)
            if run is not None and run.active:
                if not run.executor:
                    self.watching[run.id] = (key, seed)
                    continue
                # No process relays the events of a remote run that an earlier dispatcher left active.
                self.store.finish_run(run.id, "interrupted", "the sweep's earlier dispatcher stopped before the "
                                      "run ended", only_if_active=True)
            run_id = self.executor.submit(point_config(self.spec, state.point, seed))
            state.runs[seed] = self.store.get_run(run_id)
            self.watching[run_id] = (key, seed)
            yield {"type": "submitted", "run_id": run_id, "point": _jsonable(state.point), "seed": seed}
            if self.should_stop():
                return

    # Watching

    def collect_ended(self) -> Iterator[dict]:
        """Yield a "run_end" event for every watched run that ended since the last call."""
        self.executor.poll()
        if not self.watching:
            return
        current = {r.id: r for r in self.store.list_runs(kind="train", group_id=self.sweep_id)}
        for run_id in list(self.watching):
            run = current.get(run_id)
            if run is None or run.active:
                continue
            key, seed = self.watching.pop(run_id)
            self.points[key].runs[seed] = run
            yield {"type": "run_end", "run_id": run_id, "status": run.status, "final_acc": run.final_acc}

    def stop_all(self) -> Iterator[dict]:
        """Stop every active run of the sweep and wait (up to STOP_WAIT_SECONDS) for the watched ones to end."""
        for run in self.store.list_runs(kind="train", group_id=self.sweep_id, statuses=("queued", "running")):
            self.store.request_stop(run.id)
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while self.watching and time.monotonic() < deadline:
            yield from self.collect_ended()
            time.sleep(POLL_SECONDS)

    # Results

    def counts(self) -> dict[str, int]:
        statuses = [run.status for state in self.points.values() for run in state.runs.values()]
        return {status: statuses.count(status) for status in sorted(set(statuses))}

    def best(self) -> tuple[dict[str, Any] | None, float | None]:
        scored = [(s.mean_acc(), s.point) for s in self.points.values() if s.mean_acc() is not None]
        if not scored:
            return None, None
        acc, point = max(scored, key=lambda item: item[0])
        return point, acc

    def end_event(self, status: str, message: str) -> dict:
        point, acc = self.best()
        return {"type": "end", "status": status, "message": message, "final_acc": acc,
                "best_point": _jsonable(point) if point is not None else None, "counts": self.counts(),
                "seconds": time.monotonic() - self.started}


def sweep_job(params: dict[str, Any], ctx: jobs.JobContext) -> Iterator[dict]:
    """Submit a sweep's missing runs, watch them end, and end with the best point's mean accuracy."""
    record = load_sweep(ctx.store, params["sweep_id"])
    executor = make_executor(record.spec, ctx.store, record.id, record.owner)
    try:
        dispatcher = Dispatcher(ctx.store, record.spec, record.id, executor, ctx.should_stop)
        if record.spec.search == "tpe":
            yield from _run_tpe(dispatcher)
        else:
            yield from _run_planned(dispatcher)
    finally:
        executor.close()


def _run_planned(d: Dispatcher) -> Iterator[dict]:
    """Grid and random search: queue every missing run at once, then watch them all."""
    states = [d.add_point(point) for point in planned_points(d.spec)]
    done = sum(len(s.seeds) - len(s.missing_seeds()) for s in states)
    yield {"type": "plan", "points": len(states), "runs": len(states) * len(d.spec.seeds), "already_done": done,
           "executor": d.executor.name}
    for state in states:
        yield from d.submit_missing(state)
        if d.should_stop():
            break
    while d.watching and not d.should_stop():
        yield from d.collect_ended()
        time.sleep(POLL_SECONDS)
    yield from _end(d)


def _end(d) -> Iterator[dict]:
    """Stop what is still running if a stop was requested, then yield the dispatcher's end event."""
    if d.should_stop():
        yield from d.stop_all()
        yield d.end_event("stopped", f"stopped; {_summary(d)}")
        return
    yield d.end_event("finished", _summary(d))


def _summary(d: Dispatcher) -> str:
    counts = d.counts()
    total = sum(len(s.seeds) for s in d.points.values())
    parts = [f"{counts.get('finished', 0)} of {total} runs finished"]
    parts += [f"{n} {status}" for status, n in counts.items() if status != "finished"]
    return ", ".join(parts)


# TPE search


def _distributions(spec: SweepSpec) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions = {}
    for name in spec.point_axes:
        values = spec.axes[name]
        if isinstance(values, Range):
            if RANGE_AXES[name] is int:
                distributions[name] = IntDistribution(math.ceil(values.low), math.floor(values.high), log=values.log)
            else:
                distributions[name] = FloatDistribution(values.low, values.high, log=values.log)
        else:
            distributions[name] = CategoricalDistribution([_to_optuna(name, v) for v in values])
    return distributions


def _to_optuna(name: str, value: Any) -> Any:
    return "+".join(value) if name == "target_modules" and value is not None else value


def _from_optuna(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    point = {}
    for name in spec.point_axes:
        value = params[name]
        if isinstance(spec.axes[name], Range):
            value = round_to_axis(name, value, spec.axes[name])
        elif name == "target_modules":
            value = tuple(value.split("+"))
        point[name] = value
    return normalize_point(spec, point)


def _run_tpe(d: Dispatcher) -> Iterator[dict]:
    """TPE search: propose points a batch at a time and tell Optuna each point's mean accuracy as it ends."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = d.spec
    budget = int(spec.budget)
    distributions = _distributions(spec)
    # NOTE: Optuna's default of 10 random startup trials would leave small budgets without a single TPE
    # proposal, so a third of the budget (1 to 10 trials) is drawn at random before TPE takes over.
    sampler = optuna.samplers.TPESampler(seed=spec.sampler_seed, n_startup_trials=min(10, max(1, budget // 3)),
                                         constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)

    # Points an earlier dispatcher of this sweep proposed: finished ones teach the sampler, the rest run again.
    earlier: dict[str, dict[str, Any]] = {}
    for run in d.previous.values():
        point = point_from_config(spec, run.config)[0]
        earlier.setdefault(point_key(point), point)
    unfinished: list[PointState] = []
    for point in earlier.values():
        state = d.add_point(point)
        if state.missing_seeds():
            unfinished.append(state)
            continue
        params = {n: _to_optuna(n, v) for n, v in point.items() if v is not None}
        value = state.mean_acc()
        outcome = {"value": value} if value is not None else {"state": TrialState.FAIL}
        study.add_trial(create_trial(params=params, distributions={n: distributions[n] for n in params}, **outcome))
    concurrency = max(1, math.ceil(d.executor.slots() / len(spec.seeds)))
    yield {"type": "plan", "points": budget, "runs": budget * len(spec.seeds),
           "already_done": sum(len(s.seeds) - len(s.missing_seeds()) for s in d.points.values()),
           "executor": d.executor.name, "concurrency": concurrency}

    active: list[PointState] = []
    for state in unfinished:
        active.append(state)
        yield from d.submit_missing(state)
    proposed = len(d.points)
    while not d.should_stop():
        while len(active) < concurrency and proposed < budget and not d.should_stop():
            trial = study.ask(distributions)
            proposed += 1
            state = d.add_point(_from_optuna(spec, trial.params), trial)
            if not state.missing_seeds():  # TPE proposed a point it already has a result for
                _tell(study, trial, state.mean_acc())
                continue
            state.trial = trial
            active.append(state)
            yield from d.submit_missing(state)
        yield from d.collect_ended()
        for state in [s for s in active if not any(r.active for r in s.runs.values())]:
            active.remove(state)
            if state.trial is not None:
                _tell(study, state.trial, state.mean_acc())
        if not active and proposed >= budget:
            break
        time.sleep(POLL_SECONDS)
    yield from _end(d)


def _tell(study, trial, value: float | None) -> None:
    """Report a point's mean accuracy; a point without a finished run (all diverged or failed) fails its trial."""
    from optuna.trial import TrialState

    if value is None:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, value)


def _jsonable(point: dict[str, Any]) -> dict[str, Any]:
    return {name: list(v) if isinstance(v, tuple) else v for name, v in point.items()}
