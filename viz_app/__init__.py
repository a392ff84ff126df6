"""DeformLens' Gradio UI: pure render functions and the Blocks wiring that connects them.

* ``models``: which model runs on which image (registry, safe uploads, caches; the model runs once
  per image, model and thresholds);
* ``render``: images and plotly figures from a cached ``dcnv3.probe.Probe`` (no gradio);
* ``health``: per-layer numbers and plain-language flags;
* ``exports``: PNG / NPZ / JSON / CSV writers and the HTTP API's JSON;
* ``ui``: the gr.Blocks (``build_app``); ``app.py`` launches it.
"""
