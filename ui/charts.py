"""Plotly figures shared by the pages: training curves, quantization, parameters and memory, runs and sweeps.

The experiment pages' figures are in `ui.experiment_charts`.
"""

import math
import textwrap

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

ORANGES = ["#FDD0A2", "#FDAE6B", "#FD8D3C", "#E6550D", "#A63603"]  # light to dark, for an ordered series
COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


def base_layout(fig: go.Figure, title: str, x_title: str, y_title: str, height: int = 320) -> go.Figure:
    """Give `fig` the pages' common title, size, margins and axis titles, and return it."""
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
    fig = base_layout(fig, title, "step", "cross-entropy loss")
    fig.update_layout(showlegend=len(series) > 1)
    fig.update_yaxes(rangemode="tozero")  # a loss is never negative
    if not any(len(steps) for steps, _ in series.values()):
        fig.update_xaxes(range=[0, 10])  # Plotly's default range for no data runs from -1
        fig.update_yaxes(range=[0, 1])
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
    fig = base_layout(fig, title, x_title, "accuracy")
    fig.update_yaxes(range=[0.0, 1.02])
    fig.update_layout(showlegend=len(series) > 1)
    if x_title == "epoch":
        # Whole epochs only: Plotly would put ticks at 1.5 and 2.5 on a short run.
        last = max((max(xs) for xs, _ in series.values() if len(xs)), default=0)
        fig.update_xaxes(tickmode="linear", tick0=1, dtick=max(1, math.ceil(last / 10)))
        if not last:
            fig.update_xaxes(range=[0.5, 8.5])
    return fig


def legend_under_title(fig: go.Figure, top: int = 80) -> go.Figure:
    """Put a horizontal legend between the title and the plot, so the two never overlap."""
    fig.update_layout(title=dict(y=1.0, yanchor="top", yref="container", pad=dict(t=8)),
                      margin=dict(t=top), hovermode="closest",
                      legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"))
    return fig


# Quantization lab

def _histogram(values: np.ndarray, bins: int, span: tuple[float, float] | None = None,
               density: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    counts, edges = np.histogram(values, bins=bins, range=span, density=density)
    # Plain lists, because Plotly sends numpy arrays base64-encoded, which browser tests cannot count.
    return ((edges[:-1] + edges[1:]) / 2).tolist(), counts.tolist(), float(edges[1] - edges[0])


def error_histograms(errors: dict[str, np.ndarray], subtitles: dict[str, str], layer: str,
                     bins: int = 61) -> go.Figure:
    """Plot histograms of `W - dequantize(quantize(W))` for one layer, one panel per scheme with its own x range.

    `errors` maps a scheme's label to the layer's flat error array; `subtitles` adds a line under each label.
    Each panel's x axis is in units of a power of ten that suits its range, named in the axis title.
    """
    labels = list(errors)
    fig = make_subplots(rows=1, cols=len(labels), horizontal_spacing=0.05,
                        subplot_titles=[f"{label}<br><span style='font-size:11px'>{subtitles.get(label, '')}</span>"
                                        for label in labels])
    for i, label in enumerate(labels, start=1):
        values = errors[label]
        reach = float(np.abs(values).max()) or 1e-12
        exponent = int(np.floor(np.log10(reach)))
        unit = 10.0 ** exponent
        centers, counts, width = _histogram(values / unit, bins, (-reach / unit, reach / unit))
        fig.add_trace(go.Bar(x=centers, y=counts, width=width, name=label, showlegend=False,
                             marker=dict(color=COLORS[(i - 1) % len(COLORS)], line=dict(width=0)),
                             hovertemplate=f"error %{{x:.2f}}×10<sup>{exponent}</sup><br>%{{y}} weights"
                                           f"<extra>{label}</extra>"),
                      row=1, col=i)
        fig.update_xaxes(title_text=f"error (×10<sup>{exponent}</sup>)", nticks=5, tickangle=0, row=1, col=i)
    fig.update_yaxes(title_text="weights per bin", row=1, col=1)
    fig.update_annotations(font=dict(size=13))
    fig.update_layout(title=dict(text=f"Quantization error W − dequantize(quantize(W)) of {layer}", x=0,
                                 font=dict(size=15)),
                      height=340, margin=dict(l=10, r=10, t=95, b=10), bargap=0, uirevision="keep")
    return fig


def sqnr_chart(table) -> go.Figure:
    """Plot the signal-to-quantization-noise ratio per layer (rows of `layer_error_table`), a bar series per scheme."""
    fig = go.Figure()
    for i, (label, rows) in enumerate(table.groupby("label", sort=False)):
        fig.add_trace(go.Bar(x=rows.layer.tolist(), y=rows.sqnr_db.tolist(), name=label,
                             marker_color=COLORS[i % len(COLORS)],
                             hovertemplate="%{x}: %{y:.1f} dB<extra>" + label + "</extra>"))
    fig = base_layout(fig, "Signal-to-quantization-noise ratio per layer (higher is better)", "layer",
                  "SQNR (dB)")
    fig.update_layout(barmode="group")
    legend_under_title(fig)
    fig.update_xaxes(tickangle=-45)
    return fig


def nf4_levels_chart(layer_weights: np.ndarray, block: dict, bins: int = 80) -> go.Figure:
    """Plot a layer's weight histogram with one NF4 block drawn over it: its weights and its 16 scaled levels.

    `block` is `tinylora.quant_lab.nf4_block(...)`. Both histograms are densities, so they share the y axis.
    """
    absmax = block["absmax"]
    reach = max(float(np.abs(layer_weights).max()), absmax)
    span = (-reach, reach)
    fig = go.Figure()
    centers, density, width = _histogram(layer_weights, bins, span, density=True)
    fig.add_trace(go.Bar(x=centers, y=density, width=width, name=f"all weights of {block['layer']}",
                         marker=dict(color="#BBBBBB", line=dict(width=0)),
                         hovertemplate="weight %{x:.3f}<br>density %{y:.2f}<extra></extra>"))
    centers, density, width = _histogram(block["weights"], bins // 2, span, density=True)
    fig.add_trace(go.Bar(x=centers, y=density, width=width, name=f"block {block['block_index']} "
                                                                  f"({len(block['weights'])} weights)",
                         marker=dict(color=COLORS[0], opacity=0.75, line=dict(width=0)),
                         hovertemplate="weight %{x:.3f}<br>density %{y:.2f}<extra></extra>"))
    top = max(density) * 1.05
    xs, ys = [], []
    for level in block["levels"]:
        xs += [float(level), float(level), None]
        ys += [0.0, top, None]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=f"16 NF4 levels × absmax {absmax:.3f}",
                             line=dict(color=COLORS[3], width=1.5, dash="dot"), hoverinfo="skip"))
    fig = base_layout(fig, f"NF4 levels over the weights of {block['layer']}, block {block['block_index']} of "
                       f"{block['n_blocks']}", "weight value", "density")
    fig.update_layout(barmode="overlay", bargap=0)
    legend_under_title(fig)
    return fig


def accuracy_bars(groups: dict[str, dict[str, float | None]], float_acc: float,
                  title: str = "Validation accuracy by quantization scheme") -> go.Figure:
    """Plot grouped accuracy bars: `groups` maps a stage ("before LoRA", ...) to {scheme label: accuracy}.

    The float32 base comes first as its own bar and as a dashed line across the chart.
    """
    fig = go.Figure()
    # An explicit offset takes the float bar out of the grouping, so it sits centred in its own category.
    width = 0.8 / max(1, len(groups))  # as wide as one bar of a group
    fig.add_trace(go.Bar(x=["float32 (not quantized)"], y=[float_acc], name="float32 base", marker_color="#777777",
                         width=width, offset=-width / 2, text=[f"{float_acc:.3f}"], textposition="inside",
                         textangle=-90, insidetextanchor="end",
                         hovertemplate="float32 base<br>accuracy %{y:.3f}<extra></extra>"))
    for i, (stage, values) in enumerate(groups.items()):
        labels = [label for label, value in values.items() if value is not None]
        accs = [values[label] for label in labels]
        fig.add_trace(go.Bar(x=labels, y=accs, name=stage, marker_color=COLORS[i % len(COLORS)],
                             text=[f"{acc:.3f}" for acc in accs], textposition="inside", textangle=-90,
                             insidetextanchor="end", constraintext="none", textfont=dict(size=12),
                             hovertemplate="%{x}<br>accuracy %{y:.3f}<extra>" + stage + "</extra>"))
    fig.add_hline(y=float_acc, line=dict(color="#777777", dash="dash", width=1))
    fig.add_hline(y=0.5, line=dict(color="#999", dash="dot", width=1))
    fig = base_layout(fig, title, "frozen base storage", "validation accuracy<br>(dashed: float32, dotted: chance)",
                  height=380)
    fig.update_yaxes(range=[0.0, 1.02])
    fig.update_layout(barmode="group")
    legend_under_title(fig)
    return fig


# Parameters and memory

def _percent(value: float) -> str:
    return f"{value:.2f}%" if value < 10 else f"{value:.0f}%"


def trainable_parameters_chart(table) -> go.Figure:
    """Plot the trainable parameters of full finetuning and of LoRA per rank and target set, on a log axis.

    `table` has the columns of `tinylora.memory.trainable_parameters_table`; bars carry the share of full
    finetuning's trainable parameters.
    """
    fig = go.Figure()
    full = table[table.method == "full"].iloc[0]
    fig.add_trace(go.Bar(x=["full finetune"], y=[int(full.trainable)], name="full finetune (every parameter)",
                         marker_color="#555555", text=[_percent(full.percent_of_full)], textposition="outside",
                         hovertemplate="full finetune: %{y:,} trainable<extra></extra>"))
    lora = table[table.method == "lora"]
    for i, (target_set, rows) in enumerate(lora.groupby("target_set", sort=False)):
        name = f"LoRA on {target_set} ({rows.target_modules.iloc[0].replace(',', '+')})"
        fig.add_trace(go.Bar(x=[f"r={int(r)}" for r in rows.r], y=rows.trainable.tolist(), name=name,
                             marker_color=COLORS[i % len(COLORS)], text=[_percent(p) for p in rows.percent_of_full],
                             textposition="outside", textangle=-90, textfont=dict(size=12), constraintext="none",
                             customdata=rows.percent_of_full.tolist(),
                             hovertemplate="%{x}: %{y:,} trainable, %{customdata:.2f}% of full<extra>" + name
                                           + "</extra>"))
    fig = base_layout(fig, "Trainable parameters (bar labels: % of full finetuning)", "method and rank r",
                  "trainable parameters (log scale)", height=420)
    fig.update_yaxes(type="log", range=[3, 6.3], tickformat=",d")
    fig.update_layout(barmode="group")
    legend_under_title(fig)
    return fig


def _wrap(label: str, width: int = 16) -> str:
    """Break a category label into lines of about `width` characters, so x tick labels stay horizontal."""
    return "<br>".join(textwrap.wrap(label, width))


def memory_chart(table, title: str, unit: str = "KiB") -> go.Figure:
    """Plot training memory per method variant, stacked: frozen base, trainable weights, gradients, AdamW state.

    `table` has `label` and the byte columns of `tinylora.memory.estimate_memory`. When any row includes a float32
    copy of a quantized base (`dequantized_copy_bytes`), that copy is a fifth part of the stack.
    """
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    parts = [("frozen_base_bytes", "frozen base weights"), ("trainable_bytes", "trainable weights"),
             ("gradient_bytes", "gradients"), ("optimizer_bytes", "AdamW state")]
    if "dequantized_copy_bytes" in table and table.dequantized_copy_bytes.any():
        parts.append(("dequantized_copy_bytes", "float32 copy of the quantized base"))
    fig = go.Figure()
    for i, (column, name) in enumerate(parts):
        fig.add_trace(go.Bar(x=[_wrap(label) for label in table.label], y=(table[column] / scale).tolist(),
                             name=name, marker_color=COLORS[i],
                             hovertemplate="%{x}<br>" + name + ": %{y:,.1f} " + unit + "<extra></extra>"))
    fig.add_trace(go.Scatter(x=[_wrap(label) for label in table.label], y=(table.total_bytes / scale).tolist(),
                             mode="text", showlegend=False,
                             text=[f"{v / scale:,.1f} {unit}" for v in table.total_bytes], textposition="top center",
                             hoverinfo="skip"))
    fig = base_layout(fig, title, "method", f"training memory ({unit})", height=420)
    fig.update_xaxes(tickangle=0)
    fig.update_yaxes(range=[0, float(table.total_bytes.max()) / scale * 1.15])
    fig.update_layout(barmode="stack")
    legend_under_title(fig)
    return fig


def breakdown_chart(table) -> go.Figure:
    """Plot the bytes stored per layer of a built model, stacked by role: frozen float, frozen quantized, trainable.

    `table` has the columns layer, role and bytes (one row per layer and role).
    """
    fig = go.Figure()
    roles = ["frozen float32", "frozen quantized", "trainable float32"]
    for i, role in enumerate(roles):
        rows = table[table.role == role]
        fig.add_trace(go.Bar(x=rows.layer.tolist(), y=(rows.bytes / 1024).tolist(), name=role, marker_color=COLORS[i],
                             hovertemplate="%{x}<br>" + role + ": %{y:,.2f} KiB<extra></extra>"))
    fig = base_layout(fig, "Bytes stored per layer", "layer", "stored (KiB)", height=380)
    fig.update_layout(barmode="stack")
    legend_under_title(fig)
    fig.update_xaxes(tickangle=-45)
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
    fig = base_layout(fig, title, x_title, y_title, height=360)
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0))
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
    fig = base_layout(fig, "Mean final validation accuracy", x_title, y_title, height=360)
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
            # Ticks at the values the runs took (a grid has a few), not at Plotly's round numbers between them.
            distinct = sorted(set(values))
            ticks = dict(tickvals=distinct, ticktext=[f"{v:,g}" for v in distinct]) if len(distinct) <= 12 else {}
            dimensions.append(dict(label=title, values=values, **ticks))
        else:
            categories = list(dict.fromkeys(str(v) for v in values))  # in order of first appearance
            dimensions.append(dict(label=title, values=[categories.index(str(v)) for v in values],
                                   tickvals=list(range(len(categories))), ticktext=categories))
    dimensions.append(dict(label="val accuracy", values=accuracies, range=[min([0.5, *accuracies]), 1.0]))
    # The range labels at each axis's ends repeat or crowd the tick labels, so they are hidden.
    fig = go.Figure(go.Parcoords(dimensions=dimensions, rangefont=dict(size=1, color="rgba(0,0,0,0)"),
                                 line=dict(color=accuracies, colorscale="Viridis", showscale=True,
                                           cmin=min([0.5, *accuracies]), cmax=1.0)))
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
    fig = base_layout(fig, "Accuracy and trainable parameters against r", "r", "mean final validation accuracy",
                  height=380)
    # The accuracy axis covers every error bar.
    spreads = accuracy["acc_std"].astype("float64").fillna(0.0)
    if len(accuracy):
        low = float((accuracy["acc_mean"] - spreads).min())
        high = float((accuracy["acc_mean"] + spreads).max())
        fig.update_yaxes(range=[max(0.0, low - 0.03), min(1.0, high) + 0.03])
    r_values = sorted(set(accuracy["r"]) | set(trainable["r"]))
    fig.update_xaxes(type="log", tickvals=r_values, ticktext=[str(r) for r in r_values])
    fig.update_layout(hovermode="closest", legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
                      yaxis2=dict(title="trainable parameters", overlaying="y", side="right", showgrid=False,
                                  rangemode="tozero", tickmode="auto", tickformat=",d"),
                      margin=dict(l=10, r=10, t=40, b=10))
    return fig
