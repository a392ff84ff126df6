"""A plotly figure as the plain data plotly.js draws, without plotly.py's validation.

``go.Figure(data=..., layout=...)`` validates every property of every trace through plotly.py's
validator objects: for the sampling view's ~20 traces that is ~10 ms per click, the largest share
of a click's re-render. Gradio's ``gr.Plot`` only needs ``to_json()`` from a plotly value, so
the click path hands it a ``FigureSpec`` (the same dicts, serialised directly). ``to_figure()``
builds the validated ``go.Figure`` for anyone who wants one: the tests do, so an invalid
property still fails there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import plotly.graph_objects as go
import plotly.io.json as plotly_json

__all__ = ["FigureSpec"]


@dataclass
class FigureSpec:
    """``data``: trace dicts as plotly.js takes them (numpy arrays allowed); ``layout``: a dict."""

    data: list[dict] = field(default_factory=list)
    layout: dict = field(default_factory=dict)

    def to_json(self) -> str:
        """The figure JSON plotly.js renders (numpy arrays become lists; what gr.Plot sends)."""
        return plotly_json.to_json_plotly({"data": self.data, "layout": self.layout})

    def to_figure(self) -> go.Figure:
        """The validated plotly.py figure (raises on an invalid property)."""
        return go.Figure(data=self.data, layout=self.layout)
