"""DeformLens' Gradio UI: pure modules that compute and draw, and the Blocks wiring that connects them.

The app's state and services (no gradio):

* ``cache``: ``LRUCache``, the one cache class of the app (bounded, thread-safe, value keys);
* ``models``: ``ModelRegistry``, the models offered by name (bundled, a models folder, uploads,
  one untrained model per YAML ``dcnv3.yolo`` ships) and loading them safely;
* ``images``: ``load_image``, any image file or array -> the BGR array the model sees;
* ``analyser``: ``Analyser``, the cached model run (``Analysis``) and the lock every forward takes;
* ``files``: ``FileStore``, the folder the app writes views, exports and videos to;
* ``context``: ``AppContext``, all of the above made once per app and handed to every tab;
* ``view_state``: the tabs' view states (``ImageView``, ``CompareView``, ``VideoRun``), immutable;
* ``retention``: how long uploads and outputs are kept (the sweeper thread).

Pictures, figures and numbers from a cached ``dcnv3.probe.Probe`` (no gradio): ``render``
(sampling view, fields, histograms), ``receptive`` (receptive-field pictures and their cache),
``health`` (per-layer numbers and flags), ``exports`` (PNG / NPZ / JSON / CSV and the API's JSON),
``video_render`` (the Video tab's plots and table), ``toy`` (the Learn tab's scene),
``figure_spec`` (plotly figures without plotly.py's validation).

Gradio: ``ui`` (``build_app(ctx)``: the page and its tabs), ``image_tab`` (with ``/detect`` and
``/sampling``), ``receptive_tab`` (with ``/erf``), ``video_tab`` (with ``/video``), ``compare_tab``,
``learn_tab``, ``inputs`` (file inputs), ``safety`` (no URL is fetched for a client).
``server`` (``python app.py``, ``deformlens-app``) parses the arguments, makes the context and launches the Blocks.
"""
