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


def sweep_heatmap(data, x_title: str, y_title: str, x_labels: list[str], y_labels: list[str]) -> go.Figure:
    """Mean final validation accuracy per cell of two sweep axes (`tinylora.sweep_results.HeatmapData`).

    Each cell shows its mean; hovering shows the spread (sample std over seeds) and how many runs it averages.
    Cells without a finished run stay empty.
    """
    custom = [[[("–" if s is None else f"{s:.3f}"), n] for s, n in zip(std_row, count_row)]
              for std_row, count_row in zip(data.std, data.count)]
    values = [v for row in data.mean for v in row if v is not None]
    fig = go.Figure(go.Heatmap(
        z=data.mean, x=x_labels, y=y_labels, customdata=custom, zmin=min([0.5, *values]), zmax=1.0,
        colorscale="Viridis", colorbar=dict(title=dict(text="accuracy")), texttemplate="%{z:.3f}",
        hovertemplate=(f"{x_title} %{{x}}<br>{y_title} %{{y}}<br>mean accuracy %{{z:.3f}}<br>"
                       "std %{customdata[0]}<br>runs averaged %{customdata[1]}<extra></extra>"),
        xgap=2, ygap=2))
    fig = _layout(fig, "Mean final validation accuracy", x_title, y_title, height=360)
    fig.update_layout(hovermode="closest")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


def sweep_parallel_coordinates(columns: list[tuple[str, list]], accuracies: list[float]) -> go.Figure:
    """One line per finished run across the sweep's axes, ending at its final validation accuracy.

    `columns` lists (title, values, numeric) per axis: numeric axes are scaled, the others list their values.
    """
    dimensions = []
    for title, values, numeric in columns:
        if numeric:
            dimensions.append(dict(label=title, values=values))
        else:
            categories = list(dict.fromkeys(str(v) for v in values))  # in order of first appearance
            dimensions.append(dict(label=title, values=[categories.index(str(v)) for v in values],
                                   tickvals=list(range(len(categories))), ticktext=categories))
    dimensions.append(dict(label="val accuracy", values=accuracies, range=[min([0.5, *accuracies]), 1.0]))
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=dict(color=accuracies, colorscale="Viridis",
                                                                  showscale=True, cmin=min([0.5, *accuracies]),
                                                                  cmax=1.0)))
    fig.update_layout(title=dict(text="Every finished run", x=0, y=0.98, yanchor="top", font=dict(size=15)),
                      height=400, margin=dict(l=60, r=40, t=90, b=30), uirevision="keep")
    return fig


def accuracy_params_chart(accuracy, trainable) -> go.Figure:
    """Accuracy (left axis, mean ± std per r) and trainable parameters (right axis, dashed) against r.

    `accuracy` and `trainable` are `tinylora.sweep_results.accuracy_by_r` and `trainable_by_r` tables.
    """
    fig = go.Figure()
    for i, (name, group) in enumerate(accuracy.groupby("series", sort=False)):
        std = [0.0 if s is None or s != s else s for s in group["acc_std"]]
        fig.add_trace(go.Scatter(x=group["r"].tolist(), y=group["acc_mean"].tolist(), mode="lines+markers",
                                 name=f"accuracy: {name}",
                                 error_y=dict(type="data", array=std, visible=True, thickness=1.2),
                                 line=dict(color=COLORS[i % len(COLORS)], width=2), marker=dict(size=8),
                                 hovertemplate="r %{x}<br>mean accuracy %{y:.3f}<extra>%{fullData.name}</extra>"))
    for i, (name, group) in enumerate(trainable.groupby("series", sort=False)):
        fig.add_trace(go.Scatter(x=group["r"].tolist(), y=group["trainable"].tolist(), mode="lines+markers", yaxis="y2",
                                 name=f"trainable: {name}" if name else "trainable parameters",
                                 line=dict(color="#888", dash="dash", width=1.4),
                                 marker=dict(symbol=["square", "diamond", "triangle-up", "x"][i % 4], size=7),
                                 hovertemplate="r %{x}<br>%{y:,} trainable<extra>%{fullData.name}</extra>"))
    fig = _layout(fig, "Accuracy and trainable parameters against r", "r", "mean final validation accuracy",
                  height=380)
    r_values = sorted(set(accuracy["r"]) | set(trainable["r"]))
    fig.update_xaxes(type="log", tickvals=r_values, ticktext=[str(r) for r in r_values])
    fig.update_layout(hovermode="closest", legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      yaxis2=dict(title="trainable parameters", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero", tickmode="auto", tickformat=",d"),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
