"""Layer 1, drawing: annotators that take a scene and return it (``annotate(scene, ...)``), for
pictures (``overlay``) and video frames (``video_overlay``). numpy and OpenCV."""
