"""The Train page's run charts, drawn on canvases by a small component (`live_charts.js`).

Each chart update through a script run made the browser re-render the page, and a Plotly chart lays out its
whole figure each time. At 4 updates a second that kept the browser's renderer busy for about 0.4 of a core,
and a training worker on the same two cores lacked that time. So the component fetches the run's live file
(`tinylora.live_log`) 5 times a second, served by the Streamlit server as a component's static files, and
redraws two lines and their axes. Script runs still send the store's data every few seconds, which is what
the charts show when the file cannot be read, and what they show of an ended run.
"""

import math
from pathlib import Path

import streamlit as st
from streamlit.components.v1 import declare_component

from tinylora.config import TrainConfig
from tinylora.progress import RunProgress
from tinylora.store import RunStore

from .charts import COLORS

MAX_POINTS = 1000  # a chart is a few hundred pixels wide: more points add data to send, not detail

_HTML = """<div class="live">
<div class="progress" hidden>
  <div class="progress-text"></div><div class="progress-track"><div class="progress-bar"></div></div>
</div>
<div class="live-charts">
  <div class="panel"><div class="title"></div><canvas role="img" data-chart="loss"></canvas></div>
  <div class="panel"><div class="title"></div><canvas role="img" data-chart="accuracy"></canvas></div>
</div>
</div>"""
_CSS = """
.progress { margin-bottom: 1rem; font-family: var(--st-font, sans-serif); font-size: 14px; color: #31333f; }
.progress-track { height: 6px; margin-top: 4px; border-radius: 3px; background: #f0f2f6; }
.progress-bar { height: 100%; width: 0; border-radius: 3px; background: var(--st-primary-color, #4c78a8); }
.live-charts { display: flex; flex-wrap: wrap; gap: 1rem; font-family: var(--st-font, sans-serif); }
.panel { flex: 1 1 320px; min-width: 0; }
.title { height: 28px; padding: 6px 4px 0; font-size: 15px; font-weight: 600; color: #31333f; }
canvas { display: block; width: 100%; height: 292px; cursor: crosshair; }
"""
_component = st.components.v2.component("tinylora_live_charts", html=_HTML, css=_CSS,
                                        js=(Path(__file__).parent / "live_charts.js").read_text())


def thin(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """Keep at most about `limit` points of a long series, with its spikes: each bucket's lowest and highest
    point in their order, and the last point."""
    n = len(xs)
    if n <= limit:
        return list(xs), list(ys)
    size = math.ceil(2 * n / limit)
    indices: list[int] = []
    for start in range(0, n, size):
        bucket = range(start, min(start + size, n))
        indices.extend(sorted({min(bucket, key=ys.__getitem__), max(bucket, key=ys.__getitem__)}))
    if indices[-1] != n - 1:
        indices.append(n - 1)
    return [xs[i] for i in indices], [ys[i] for i in indices]


_served: dict[Path, str] = {}


def live_url(store: RunStore, run_id: str) -> str:
    """Return the URL, relative to the page, at which the Streamlit server serves a run's live file."""
    directory = store.live_path(run_id).parent
    if directory not in _served:
        directory.mkdir(parents=True, exist_ok=True)
        _served[directory] = declare_component("live_files", path=str(directory)).name
    return f"component/{_served[directory]}/{store.live_path(run_id).name}"


def chart_data(steps: list[int], losses: list[float], epochs: list[float], accs: list[float], steps_total: int,
               epochs_total: int) -> dict:
    """Build what the component draws: a loss chart over all of a run's steps and an accuracy chart over all its
    epochs, so the lines grow towards the right edge as the run trains."""
    count = len(steps)
    steps, losses = thin(steps, losses)
    loss = {"title": "Training loss", "x_title": "step", "y_title": "cross-entropy loss",
            "x": steps, "y": losses, "count": count, "x_range": [0, steps_total],
            "y_range": None, "color": COLORS[0], "markers": False, "hline": None}
    accuracy = {"title": "Validation accuracy", "x_title": "epoch", "y_title": "accuracy",
                "x": list(epochs), "y": list(accs), "count": len(accs),
                "x_range": [0.5, epochs_total + 0.5], "y_range": [0, 1.02], "color": COLORS[0], "markers": True,
                "hline": {"y": 0.5, "label": "chance"}}
    return {"charts": [loss, accuracy]}


def planned_steps(train: dict) -> int:
    """Count the steps of a run with these training settings (`TrainConfig` as a dict)."""
    defaults = TrainConfig()
    return (math.ceil(train.get("n_train", defaults.n_train) / train.get("batch_size", defaults.batch_size))
            * train.get("epochs", defaults.epochs))


def run_steps_total(progress: RunProgress) -> int:
    """Return a run's number of steps: from its start event, or before it (queued, or preparing) from its
    settings."""
    train = progress.run.config.get("train", {})
    return progress.steps_total or planned_steps(train) or max(progress.steps, default=0) or 1


def live_chart_data(progress: RunProgress) -> dict:
    epochs = progress.run.config.get("train", {}).get("epochs") or max(progress.eval_epochs, default=0) or 1
    return chart_data(progress.steps, progress.losses, progress.eval_epochs, progress.eval_accs,
                      run_steps_total(progress), epochs)


def empty_live_charts(key: str, steps_total: int, epochs: int) -> None:
    """Draw the charts with no run: the axes a run of these lengths will fill."""
    _component(data=chart_data([], [], [], [], steps_total, epochs), key=key)


def live_charts(store: RunStore, progress: RunProgress, key: str) -> None:
    """Draw a run's progress line and charts; while it trains they follow its live file.

    The component sets a trigger value, which starts a script run of the caller's fragment, when the live
    file gets its first events and when the file is removed at the run's end.
    """
    data = live_chart_data(progress)
    run = progress.run
    if run.status == "running" and not (progress.step == 0 and progress.status_message):
        data["progress"] = {"step": progress.step, "steps_total": run_steps_total(progress),
                            "seconds": progress.seconds, "stopping": bool(run.stop_requested)}
    if run.active and run.kind == "train":
        data["live_url"] = live_url(store, run.id)
    _component(data=data, key=key, on_status_change=lambda: None)
