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
