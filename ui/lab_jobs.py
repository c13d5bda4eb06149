"""The worker jobs of the Quantization page: training a finetuned base, and QLoRA over each quantized base.

Runs are found again by their config, not by session state, so a refresh, a second tab or another session
with the same settings shows the same runs and results.
"""

import json
import time
import uuid

import pandas as pd
import streamlit as st

from tinylora import jobs
from tinylora.config import RunConfig
from tinylora.progress import read_progress
from tinylora.store import Run, RunStore, StoreError

from .charts import accuracy_chart
from .run_view import REFRESH_SECONDS, format_seconds


def _plain(config: dict) -> dict:
    """Return `config` as the store returns it (tuples become lists)."""
    return json.loads(json.dumps(config))


def latest_run(store: RunStore, kind: str, config: dict) -> Run | None:
    """Return the newest run of `kind` whose stored config equals `config`, or None."""
    target = _plain(config)
    return next((run for run in store.list_runs(kind=kind) if run.config == target), None)


def ensure_base_job(store: RunStore, base: str, owner: str) -> Run:
    """Return the queued, running or failed job that trains `base`, or submit a new one.

    A failed job is returned rather than retried, so that the page shows its error and a Retry button instead
    of submitting the same failing job on every rerun.
    """
    run = latest_run(store, "base", {"base": base})
    if run is None or run.status not in ("queued", "running", "failed"):
        run = store.get_run(jobs.submit(store, "base", {"base": base}, owner=owner))
    return run


def base_job_panel(store: RunStore, run_id: str, owner: str, key: str) -> None:
    """Show a base job while it trains; rerun the page when it ends so the lab can load the base."""
    first = store.get_run(run_id)

    @st.fragment(run_every=REFRESH_SECONDS * 2 if first.active else None)
    def panel() -> None:
        run = store.get_run(run_id)
        base = run.config["base"]
        if run.status == "queued":
            st.info(f"Training the base {base} is queued behind {store.count_running()} running job(s).",
                    icon=":material/hourglass_top:")
        elif run.active:
            elapsed = format_seconds(max(0.0, time.time() - (run.started or time.time())))
            st.progress(0.0, text=f"Preparing the base {base}: a full finetune that runs once, then the lab "
                                  f"loads it from the cache · {elapsed} elapsed")
        elif run.status != "finished":
            st.error(f"Training the base {base} {run.status}: {run.message}", icon=":material/error:")
            if st.button("Retry", key=f"{key}-retry"):
                jobs.submit(store, "base", {"base": base}, owner=owner)
                st.rerun(scope="app")
        if first.active and not run.active:
            st.rerun(scope="app")

    panel()


def submit_absorb_runs(store: RunStore, configs: dict[str, RunConfig], owner: str) -> None:
    """Queue one absorb job per scheme label in `configs`, sharing one group id."""
    group = uuid.uuid4().hex[:8]
    try:
        for config in configs.values():
            jobs.submit(store, "absorb", config.to_dict(), owner=owner, group_id=group)
    except (ValueError, StoreError) as error:
        st.session_state._absorb_notice = str(error)


def absorb_results(store: RunStore, runs: dict[str, Run]) -> pd.DataFrame:
    """Return one row per scheme label with the result event of its absorb run (schemes without one are left out).

    Columns: label, status, float_acc, quantized_acc, qlora_acc, merged_acc, requantized_acc,
    merged_max_logit_change, requantized_max_logit_change, requantize_max_weight_change, run_id.
    """
    rows = []
    for label, run in runs.items():
        events = store.events(run.id, types=("result",))
        if events:
            result = {k: v for k, v in events[-1][1].items() if k != "type"}
            rows.append({"label": label, **result, "run_id": run.id})
    return pd.DataFrame(rows)


def absorb_progress(store: RunStore, runs: dict[str, Run], key: str) -> None:
    """Draw a progress bar per scheme and the validation-accuracy curves of all of them, refreshing live."""
    any_active = any(run.active for run in runs.values())

    @st.fragment(run_every=REFRESH_SECONDS * 2 if any_active else None)
    def view() -> None:
        curves, still_active = {}, False
        for label, run in runs.items():
            cache_key = f"_absorb_progress_{run.id}"
            progress = read_progress(store, run.id, st.session_state.get(cache_key))
            if progress is None:
                continue
            st.session_state[cache_key] = progress
            still_active |= progress.run.active
            curves[label] = (progress.eval_epochs, progress.eval_accs)
            acc = f" · validation accuracy {progress.eval_accs[-1]:.3f}" if progress.eval_accs else ""
            if progress.run.status == "queued":
                text = f"{label}: queued"
            elif progress.run.active and progress.step == 0:
                text = f"{label}: {progress.status_message or 'measuring the float and quantized bases'}"
            elif progress.run.active:
                text = f"{label}: step {progress.step} of {progress.steps_total or '…'}{acc}"
            else:
                text = f"{label}: {progress.run.status} after {format_seconds(progress.run.seconds)}{acc}"
                if progress.run.status not in ("finished", "stopped"):
                    text += f" ({progress.run.message})"
            st.progress(progress.fraction if progress.run.active else 1.0, text=text)
        figure = accuracy_chart(curves, title="Validation accuracy during QLoRA training")
        epochs = max(run.config["train"]["epochs"] for run in runs.values())
        figure.update_xaxes(range=[0, epochs + 0.2])  # the whole run's span, before the first point arrives
        st.plotly_chart(figure, key=f"{key}-curves", config={"displayModeBar": False})
        if any_active and not still_active:
            st.rerun(scope="app")

    view()
