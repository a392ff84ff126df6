"""DeformLens web app: ``python app.py [--host 127.0.0.1] [--port 7860] [--model PATH] [--models-dir DIR]
[--max-upload-mb 400] [--keep-files-minutes 1440]`` (``python app.py --help`` explains each).

The server is ``viz_app.server`` (also installed as the ``deformlens-app`` command); this file is the
checkout's way to start it.
"""

from viz_app.server import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    main()
