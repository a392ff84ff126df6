"""The app's tabs, each ``build(ctx)`` of an ``AppContext``: Image (with ``/detect`` and
``/sampling``), Receptive field (``/erf``), Video (``/video``), Compare, Learn, Training and
Ablation. ``viz_app.ui`` assembles them."""
