"""Pictures, figures and numbers from a cached probe, no gradio: the sampling view and fields
(``render``), plotly figures (``figure_spec``), health tables (``health``), exports and the API's
JSON (``exports``), receptive fields (``receptive``), the Video tab's plots (``video_render``),
the Learn tab's scene and sweep (``toy``, ``lesson_view``), the Training tab (``training_view``)
and ablations (``ablation_view``)."""
