"""Layer 1, the layer record's maths: pure functions of what a deformable layer sampled with
(sampling locations, per-cell statistics, whole-image fields, traces through stacked layers, how
each weight kind is drawn, per-track numbers). numpy; no ultralytics, gradio or plotly."""
