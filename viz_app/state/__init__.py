"""The app's state and services, no gradio: the one cache class (``cache``), the model registry
(``models``), image loading (``images``), the cached model run (``analyser``), the file store
(``files``), the app context every tab receives (``context``), the tabs' view states
(``view_state``) and file retention (``retention``)."""
