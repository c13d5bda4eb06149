"""Plotly figures shared by the pages."""

import plotly.graph_objects as go

COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 320) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=15)), height=height,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
                      hovermode="x unified", uirevision="keep")
    return fig


def loss_chart(series: dict[str, tuple[list[float], list[float]]], title: str = "Training loss") -> go.Figure:
    """One line of training loss per step for each named series: name -> (steps, losses)."""
    fig = go.Figure()
    for i, (name, (steps, losses)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines", name=name,
                                 line=dict(color=COLORS[i % len(COLORS)], width=1.6)))
    fig = _layout(fig, title, "step", "cross-entropy loss")
    fig.update_layout(showlegend=len(series) > 1)
    return fig


def accuracy_chart(series: dict[str, tuple[list[float], list[float]]], title: str = "Validation accuracy",
                   x_title: str = "epoch") -> go.Figure:
    """Validation accuracy against epoch for each named series, on a 0..1 axis with chance at 0.5 marked."""
    fig = go.Figure()
    for i, (name, (xs, accs)) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=xs, y=accs, mode="lines+markers", name=name,
                                 line=dict(color=COLORS[i % len(COLORS)], width=2), marker=dict(size=7)))
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot", width=1), annotation_text="chance",
                  annotation_position="bottom right")
    fig = _layout(fig, title, x_title, "accuracy")
    fig.update_yaxes(range=[0.0, 1.02])
    fig.update_layout(showlegend=len(series) > 1)
    return fig


def overlay_chart(series: dict[str, tuple[list[float], list[float], list[float] | None]], title: str,
                  x_title: str, y_title: str, y_range: tuple[float, float] | None = None,
                  chance: float | None = None, markers: bool = False,
                  colors: dict[str, str] | None = None) -> go.Figure:
    """Several runs' curves on one chart: name -> (x, raw y, smoothed y or None when smoothing is off).

    As in TensorBoard, a smoothed run is drawn as a solid line over its raw values in the same colour, faint.
    The smoothed trace carries the run's name and the raw one "<name> (raw)". Pass `colors` (name -> colour)
    to keep a run's colour the same on every chart, including charts where other runs have no points.
    """
    fig = go.Figure()
    for i, (name, (xs, raw, smoothed)) in enumerate(series.items()):
        color = (colors or {}).get(name, COLORS[i % len(COLORS)])
        mode = "lines+markers" if markers else "lines"
        if smoothed is not None:
            fig.add_trace(go.Scatter(x=xs, y=raw, mode=mode, name=f"{name} (raw)", showlegend=False,
                                     hoverinfo="skip", opacity=0.25, line=dict(color=color, width=1),
                                     marker=dict(size=5)))
        fig.add_trace(go.Scatter(x=xs, y=raw if smoothed is None else smoothed, mode=mode, name=name,
                                 line=dict(color=color, width=2), marker=dict(size=6)))
    if chance is not None:
        fig.add_hline(y=chance, line=dict(color="#999", dash="dot", width=1), annotation_text="chance",
                      annotation_position="bottom right")
    fig = _layout(fig, title, x_title, y_title, height=360)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
    return fig
