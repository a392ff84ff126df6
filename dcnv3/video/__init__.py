"""Layer 3, video: reading and writing H.264 (``io``), ultralytics' trackers on probed detections
(``tracking``) and the pipeline that probes, tracks, draws and writes a video (``pipeline``)."""
