"""DeformLens' Gradio UI, one folder per kind of thing:

* ``state/`` (no gradio): ``cache`` (``LRUCache``, the one cache class), ``models``
  (``ModelRegistry``: the models offered by name, loaded safely), ``images`` (``load_image``),
  ``analyser`` (``Analyser``: the cached model run and the lock every forward takes), ``files``
  (``FileStore``), ``context`` (``AppContext``: all of these, made once per app and handed to every
  tab), ``view_state`` (the tabs' immutable view states), ``retention`` (the sweeper);
* ``views/`` (no gradio): pictures, figures and numbers from a cached
  ``dcnv3.analysis.probe.Probe``: ``render`` (sampling view, fields, histograms), ``receptive``,
  ``health``, ``exports`` (PNG / NPZ / JSON / CSV and the API's JSON), ``video_render``, ``toy`` and
  ``lesson_view`` (the Learn tab), ``training_view``, ``ablation_view``, ``figure_spec``;
* ``components/``: ``inputs`` (file inputs that refuse URLs), ``outputs`` (pictures stored
  atomically), ``safety`` (no URL is fetched for a client);
* ``tabs/``: one ``build(ctx)`` per tab: ``image`` (with ``/detect`` and ``/sampling``),
  ``receptive`` (``/erf``), ``video`` (``/video``), ``compare``, ``learn``, ``training``,
  ``ablation``;
* ``ui`` (``build_app(ctx)``: the page and its tabs) and ``server`` (``python app.py``,
  ``deformlens-app``: arguments, context, launch).
"""
