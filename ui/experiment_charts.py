"""Plotly figures of the experiment pages: the adapter x task matrix, mixing two adapters, forgetting."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .charts import COLORS, ORANGES, base_layout, legend_under_title


# Adapters

def adapter_matrix_heatmap(row_labels: list[str], tasks: list[str], acc: list[list[float]]) -> go.Figure:
    """Plot the accuracy of each adapter (row) on each task (column), every cell annotated with its value.

    The colour runs from chance (0.5, pale) to 1.0 (dark); cells below chance share the palest colour.
    """
    # The cell text is formatted here, so it rounds exactly as the page's sentences about the same numbers do.
    text = [[f"{value:.3f}" for value in row] for row in acc]
    fig = go.Figure(go.Heatmap(
        z=acc, x=tasks, y=row_labels, zmin=0.5, zmax=1.0, colorscale="Blues", text=text, texttemplate="%{text}",
        textfont=dict(size=16), colorbar=dict(title=dict(text="accuracy")), xgap=2, ygap=2,
        hovertemplate="%{y} on %{x}<br>validation accuracy %{text}<extra></extra>"))
    fig = base_layout(fig, "Validation accuracy: adapter (row) on task (column)", "evaluated on task", "",
                  height=140 + 55 * len(row_labels))
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(type="category", side="bottom", tickfont=dict(size=13))
    fig.update_yaxes(type="category", autorange="reversed", tickfont=dict(size=13))  # the base last, at the bottom
    return fig


def mix_chart(weights: list[float], acc: dict[str, list[float]], weight: float, name_a: str,
              name_b: str) -> go.Figure:
    """Plot each task's accuracy of the mix (1 - w) * `name_a` + w * `name_b` against w, marking w = `weight`."""
    fig = go.Figure()
    nearest = min(range(len(weights)), key=lambda j: abs(weights[j] - weight))
    # The highest value at the marked weight is labelled above its dot and the others below theirs, so that two
    # close values do not print over each other.
    highest = max(acc, key=lambda task: acc[task][nearest]) if acc else None
    for i, (task, values) in enumerate(acc.items()):
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Scatter(x=weights, y=values, mode="lines+markers", name=f"on {task}",
                                 line=dict(color=color, width=2), marker=dict(size=6),
                                 hovertemplate="w %{x:.2f}: accuracy %{y:.3f}<extra>on " + task + "</extra>"))
        fig.add_trace(go.Scatter(x=[weights[nearest]], y=[values[nearest]], mode="markers+text", showlegend=False,
                                 marker=dict(color=color, size=13, line=dict(color="white", width=2)),
                                 text=[f"{values[nearest]:.3f}"],
                                 textposition="top right" if task == highest else "bottom right",
                                 textfont=dict(color=color, size=13), hoverinfo="skip", cliponaxis=False))
    fig.add_vline(x=weight, line=dict(color="#555", dash="dash", width=1))
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot", width=1), annotation_text="chance",
                  annotation_position="bottom right")
    fig = base_layout(fig, f"Mixing {name_a} (w = 0) into {name_b} (w = 1)", f"weight w of {name_b}", "accuracy",
                  height=340)
    fig.update_xaxes(range=[-0.03, 1.12])
    fig.update_yaxes(range=[0.0, 1.12])  # room above 1.0 for the label of a dot at the top
    legend_under_title(fig)
    return fig


# Forgetting

def forgetting_chart(runs: list[tuple[str, pd.DataFrame, list[dict]]], tasks: list[str],
                     overlay: bool = False) -> go.Figure:
    """Plot the validation accuracy on every task against training step, for one or more forgetting runs.

    `runs` lists (label, timeline, phases): a timeline has the columns step, task, acc and `phases` contains
    {"phase", "tasks", "start", "end"} in steps. Each phase boundary is a vertical line, and each phase is
    labelled above its span. Small multiples (the default) give each run a panel with one colour per
    task. `overlay` draws every run on one chart: a colour per run, solid for the first task, dashed for others.
    """
    panels = 1 if overlay else max(1, len(runs))
    columns = min(panels, 3)
    rows = (panels + columns - 1) // columns
    titles = None if overlay else [label for label, _, _ in runs] or None
    fig = make_subplots(rows=rows, cols=columns, subplot_titles=titles, shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.22 / rows)
    dashes = ["solid", "dash", "dot", "dashdot"]
    for index, (label, timeline, phases) in enumerate(runs):
        row, col = (1, 1) if overlay else (index // columns + 1, index % columns + 1)
        for t, task in enumerate(tasks):
            points = timeline[timeline.task == task]
            color = COLORS[index % len(COLORS)] if overlay else COLORS[t % len(COLORS)]
            name = f"{label}: {task}" if overlay else task
            fig.add_trace(go.Scatter(
                x=points.step.tolist(), y=points.acc.tolist(), mode="lines+markers", name=name,
                legendgroup=name, showlegend=overlay or index == 0,
                line=dict(color=color, width=2, dash=dashes[t % len(dashes)] if overlay else "solid"),
                marker=dict(size=4), hovertemplate="step %{x}: accuracy %{y:.3f}<extra>" + name + "</extra>"),
                row=row, col=col)
        if index == 0 or not overlay:
            _mark_phases(fig, phases, row, col)
    fig.update_yaxes(range=[0.0, 1.12], title_text="accuracy", col=1)
    fig.update_xaxes(title_text="training step", row=rows)
    fig.update_annotations(font=dict(size=12))
    fig.update_layout(title=dict(text="Validation accuracy on each task during training", x=0, font=dict(size=15)),
                      height=200 + 260 * rows, margin=dict(l=10, r=10, t=70, b=40), uirevision="keep",
                      hovermode="closest",
                      legend=dict(orientation="h", x=0, xanchor="left", y=-0.2 / rows, yanchor="top"))
    return fig


def _mark_phases(fig: go.Figure, phases: list[dict], row: int, col: int) -> None:
    """Draw a dashed line at each phase boundary and write each phase's name above its span."""
    for i, phase in enumerate(phases):
        if i > 0:
            fig.add_vline(x=phase["start"], line=dict(color="#444", dash="dash", width=1.2), row=row, col=col)
        fig.add_annotation(x=(phase["start"] + phase["end"]) / 2, y=1.06, text=f"phase {phase['phase']}",
                           showarrow=False, font=dict(size=11, color="#444"), row=row, col=col)
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot", width=1), row=row, col=col)


def learns_less_scatter(points: pd.DataFrame, base: dict[str, float] | None, task_a: str,
                        task_b: str) -> go.Figure:
    """Plot the accuracy learned on B (x) against the accuracy kept on A (y), one point per run on B.

    `points` has the columns run, method, r, trainable, acc_b, acc_a. `base` is the model finetuned on A
    before any run on B, drawn as a star: the point every run starts from. Each run is its own legend entry,
    because runs that learn little sit close together and on-chart labels would overlap.
    """
    fig = go.Figure()
    hover = f"{task_b}: %{{x:.3f}}<br>{task_a}: %{{y:.3f}}"
    if base is not None:
        fig.add_trace(go.Scatter(x=[base[task_b]], y=[base[task_a]], mode="markers", name="start: finetuned on A",
                                 marker=dict(symbol="star", size=17, color="#777"),
                                 hovertemplate=f"finetuned on {task_a}, before {task_b}<br>{hover}<extra></extra>"))
    ranks = [int(r) for r in points.r.dropna()]
    for row in points.itertuples():
        if row.method == "full":
            name, marker = "full finetuning", dict(symbol="square", size=14, color="#333")
        else:
            # Darker orange for higher ranks, on a log scale from the lowest to the highest rank shown.
            position = np.log2(row.r / min(ranks)) / max(1.0, np.log2(max(ranks) / min(ranks)))
            name = f"LoRA r={row.r}"
            marker = dict(size=13, color=ORANGES[round(position * (len(ORANGES) - 1))],
                          line=dict(color="#333", width=1))
        fig.add_trace(go.Scatter(x=[row.acc_b], y=[row.acc_a], mode="markers", name=name, marker=marker,
                                 hovertemplate=f"{name} ({row.trainable:,} trainable)<br>{hover}<extra></extra>"))
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot", width=1))
    fig.add_vline(x=0.5, line=dict(color="#999", dash="dot", width=1))
    fig = base_layout(fig, f"Learned on B against kept on A (A: {task_a}, B: {task_b})",
                  f"accuracy on B ({task_b}): learned", f"accuracy on A ({task_a}): kept", height=440)
    fig.update_xaxes(range=[0.3, 1.04])
    fig.update_yaxes(range=[0.3, 1.06])
    fig.update_layout(hovermode="closest")
    legend_under_title(fig)
    return fig
