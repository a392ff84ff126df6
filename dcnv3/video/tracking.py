"""Tracking on the probe's detections: ultralytics' own ByteTrack / BoT-SORT, fed without a second forward.

``make_tracker`` builds a tracker with ultralytics' default configuration; ``update_tracks`` feeds
it one frame's ``Detections`` (in order, frame by frame) and returns the confirmed tracks.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TRACKERS", "make_tracker", "update_tracks"]

TRACKERS = ("bytetrack", "botsort")


def make_tracker(name: str = "bytetrack"):
    """ultralytics' own tracker with its default configuration (``cfg/trackers/<name>.yaml``).

    ``name``: "bytetrack" or "botsort" (BoT-SORT without ReID: ReID would need another model).
    The tracker is fed the probe's detections, so tracking adds no model forward.
    """
    from ultralytics.trackers.track import TRACKER_MAP
    from ultralytics.utils import ROOT, YAML, IterableSimpleNamespace

    name = name.removesuffix(".yaml")
    if name not in TRACKERS:
        raise ValueError(f"unknown tracker {name!r}; one of {', '.join(TRACKERS)}")
    config = IterableSimpleNamespace(**YAML.load(ROOT / "cfg" / "trackers" / f"{name}.yaml"))
    if getattr(config, "with_reid", False):
        config.with_reid = False
    return TRACKER_MAP[config.tracker_type](args=config)


def update_tracks(tracker, detections, frame: np.ndarray) -> np.ndarray:
    """Tracker update on a probe's detections -> (N, 8) rows [x1, y1, x2, y2, id, score, class,
    detection index] of the confirmed tracks (ultralytics' output layout)."""
    from ultralytics.engine.results import Boxes

    data = np.column_stack([detections.boxes, detections.scores, detections.classes]).astype(np.float32)
    tracks = tracker.update(Boxes(data.reshape(-1, 6), frame.shape[:2]), frame)
    return np.asarray(tracks, dtype=np.float32).reshape(-1, 8)
