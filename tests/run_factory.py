"""Runs written straight into a real store, for tests of what pages and exports show, without training."""

import os

from tinylora.config import RunConfig, TrainConfig
from tinylora.store import RunStore


def add_run(store: RunStore, config: RunConfig | None = None, losses: list[float] = (), accs: list[float] = (),
            status: str = "finished", kind: str = "train") -> str:
    """Store a run with one step event per loss and one eval event per accuracy, then give it `status`.

    `status` "running" leaves the run running under this test process's pid; "queued" leaves it queued.
    """
    config = config or RunConfig(train=TrainConfig(epochs=max(1, len(accs))))
    run_id = store.create_run(kind, config.to_dict())
    if status == "queued":
        return run_id
    store.claim_next(os.getpid())
    steps_per_epoch = max(1, len(losses) // max(1, len(accs)))
    events = [{"type": "start", "trainable": 6_274, "total": 208_388, "steps_total": len(losses)}]
    for i, loss in enumerate(losses, start=1):
        events.append({"type": "step", "step": i, "epoch": i / steps_per_epoch, "train/loss": loss,
                       "seconds": 0.01 * i})
    for epoch, acc in enumerate(accs, start=1):
        events.append({"type": "eval", "step": epoch * steps_per_epoch, "epoch": float(epoch), "val/acc": acc,
                       "val/loss": 1 - acc, "seconds": 0.01 * epoch * steps_per_epoch})
    if status == "running":
        store.append_events(run_id, events)
        return run_id
    final_acc = accs[-1] if accs else None
    end = {"type": "end", "status": status, "message": f"test run {status}", "step": len(losses),
           "seconds": 0.01 * len(losses), "steps_per_second": 100.0, "final_acc": final_acc}
    store.append_events(run_id, events + [end], summary={k: v for k, v in end.items() if k != "type"})
    store.finish_run(run_id, status, end["message"], final_acc, end["seconds"])
    return run_id


def run_job(store: RunStore, kind: str, params: dict, group_id: str = "") -> str:
    """Run a job of `kind` to its end in this process, as a worker would, and return its run id.

    The job's real generator runs against the real store (validation, events, summary, files in its run
    directory). Only the forked worker and its heartbeat thread are left out.
    """
    import importlib

    from tinylora import jobs

    module, name = jobs.JOB_KINDS[kind].split(":")
    job = getattr(importlib.import_module(module), name)
    params = jobs.validate_job(kind, params)
    run_id = store.create_run(kind, params, group_id=group_id)
    claimed = store.claim_next(os.getpid())
    assert claimed is not None and claimed.id == run_id, "another queued run was claimed first"
    run_dir = store.run_dir(run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    context = jobs.JobContext(run_id, store, run_dir, lambda: False)
    code = jobs.record_events(store, run_id, kind, lambda: job(params, context))
    assert code == 0, store.get_run(run_id).message
    return run_id
