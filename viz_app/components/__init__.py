"""Gradio components the tabs share: file inputs that refuse URLs (``inputs``), pictures stored
atomically (``outputs``) and the guard that no URL is fetched for a client (``safety``)."""
