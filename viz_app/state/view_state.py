"""The tabs' view states: what the user is looking at in the cached analyses.

* ``ImageView``: the Image tab's point, layer, highlighted detection and cell;
* ``CompareView``: the Compare tab's two analyses and the receptive fields' point;
* ``VideoRun``: the Video tab's last processed video (what the frame inspector opens).

Each lives in a ``gr.State`` and is immutable: a handler that changes the view returns a new one
(``dataclasses.replace``) as one of its outputs, so every change is visible in the event's
outputs, and a view that reads another's state (the receptive field reads ``ImageView``) always
sees the view shown.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

__all__ = ["ImageView", "CompareView", "VideoRun"]


@dataclass(frozen=True)
class ImageView:
    """``xy``: the queried point, continuous processed-image px (pixel i spans [i, i+1));
    ``layer``: the DCNv3 layer shown (qualified name; None for a model without DCNv3);
    ``highlight``: index of the highlighted detection in the analysis' detections, or None;
    ``cell``: (row, col) of ``layer``'s cell under ``xy`` as last rendered, None off the image."""

    xy: tuple[float, float]
    layer: str | None = None
    highlight: int | None = None
    cell: tuple[int, int] | None = None

    def rendered(self, cell) -> ImageView:
        """The view with the cell its render found under ``xy``."""
        cell = None if cell is None else (int(cell[0]), int(cell[1]))
        return self if cell == self.cell else replace(self, cell=cell)


@dataclass(frozen=True)
class CompareView:
    """``analyses``: (model A's, model B's) ``analyser.Analysis`` of one image; ``names``: the two
    model names; ``scale``: detections-panel px per image px; ``xy``: the receptive fields' point,
    continuous processed-image px."""

    analyses: tuple
    names: tuple[str, str]
    scale: float
    xy: tuple[float, float]


@dataclass(frozen=True)
class VideoRun:
    """A processed video: ``source`` file, the processed source ``frames`` (indices), the frame
    ``stride``, the ``max_side`` its frames were downscaled to, the ``model`` name and the file
    stem ``name`` (for the inspected frames' file names)."""

    source: str
    frames: tuple[int, ...]
    stride: int
    max_side: int
    model: str
    name: str
