"""Pure render functions of the Video tab (no gradio): per-track rows in, plotly figure / table out.

Rows are ``dcnv3.video.pipeline`` statistics rows (``CSV_COLUMNS``): one per track and processed frame,
with the object's size (sqrt of its box area, source-video px) and the effective dilation, mean
|offset| (feature cells) and normalised weight entropy of the DCNv3 layer at its centre cell.
The entropy is ``dcnv3.record.stats.weight_entropy``'s: of |m| normalised per group, which for softmax
weights (DCNv3) is the weights themselves and for DCNv2's sigmoid or DCNv4's free weights their
magnitudes; the axis title and the table header say so.
"""

from __future__ import annotations

import plotly.graph_objects as go

from dcnv3.video.pipeline import track_summary

__all__ = ["SERIES", "time_series_figure", "track_table"]

# (row key, axis title): the four stacked panels of the time series, top to bottom.
SERIES = [
    ("size_px", "size (px)"),
    ("effective_dilation", "eff. dilation (cells)"),
    ("offset_magnitude", "mean |offset| (cells)"),
    ("weight_entropy", "weight entropy (|m| norm.)"),
]
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]


def time_series_figure(rows: list[dict], min_frames: int = 3, max_tracks: int = 10, height: int = 640) -> go.Figure:
    """Stacked time series (shared time axis) of each track's size, effective dilation, mean
    |offset| and weight entropy; one colour per track, the ``max_tracks`` longest tracks with at
    least ``min_frames`` frames (shorter ones are tracker noise). Hover: track, frame, layer, value.
    """
    tracks: dict[int, list[dict]] = {}
    for row in rows:
        tracks.setdefault(int(row["track_id"]), []).append(row)
    kept = sorted((t for t in tracks.items() if len(t[1]) >= min_frames), key=lambda t: -len(t[1]))[:max_tracks]
    kept.sort()
    panels = len(SERIES)
    gap = 0.04
    span = (1 - gap * (panels - 1)) / panels
    traces = []
    for n, (track_id, own) in enumerate(kept):
        colour = _PALETTE[n % len(_PALETTE)]
        name = f"#{track_id} {own[0]['name']}"
        for p, (key, _) in enumerate(SERIES):
            axis = "" if p == 0 else str(p + 1)
            traces.append(
                dict(
                    type="scatter",
                    mode="lines+markers",
                    x=[r["time_s"] for r in own],
                    y=[r[key] for r in own],
                    customdata=[[r["frame"], r["layer"]] for r in own],
                    name=name,
                    legendgroup=name,
                    showlegend=p == 0,
                    line=dict(color=colour, width=2),
                    marker=dict(size=4, color=colour),
                    xaxis=f"x{axis}",
                    yaxis=f"y{axis}",
                    hovertemplate=f"{name}<br>t %{{x:.2f}} s, frame %{{customdata[0]}}<br>%{{customdata[1]}}"
                    f"<br>{key}: %{{y:.3f}}<extra></extra>",
                )
            )
    grid = dict(gridcolor="#e5e5e5", zeroline=False)
    layout = dict(
        template=None,
        paper_bgcolor="white",
        plot_bgcolor="white",
        height=height,
        font=dict(family="sans-serif", size=12, color="#222"),
        margin=dict(l=70, r=10, t=70, b=50),
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0),
        hovermode="closest",
    )
    for p, (_, title) in enumerate(SERIES):
        axis = "" if p == 0 else str(p + 1)
        top = 1 - p * (span + gap)
        domain = [max(0.0, round(top - span, 6)), min(1.0, round(top, 6))]  # plotly refuses -1e-17
        layout[f"yaxis{axis}"] = dict(grid, domain=domain, title=dict(text=title, font=dict(size=11)))
        layout[f"xaxis{axis}"] = dict(
            grid,
            anchor=f"y{axis}",
            matches="x" if p else None,
            showticklabels=p == panels - 1,
            title=dict(text="time (s)") if p == panels - 1 else None,
        )
    if not kept:
        layout["annotations"] = [
            dict(text="no track lasted 3 frames", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        ]
    return go.Figure(data=traces, layout=layout)


def track_table(rows: list[dict]) -> list[dict]:
    """One row per track for the UI's table (``dcnv3.video.pipeline.track_summary`` with short headers)."""
    headers = {
        "track_id": "track",
        "name": "class",
        "frames": "frames",
        "first_s": "from (s)",
        "last_s": "to (s)",
        "size_min_px": "size min (px)",
        "size_max_px": "size max (px)",
        "effective_dilation": "eff. dilation",
        "offset_magnitude": "|offset|",
        "weight_entropy": "entropy of |m| / sum |m|",
        "size_dilation_r": "r(size, dilation)",
    }
    return [{headers[k]: v for k, v in track.items()} for track in track_summary(rows)]
