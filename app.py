"""DeformLens web app: ``python app.py [--host 127.0.0.1] [--port 7860] [--model PATH] [--models-dir DIR]``.

Runs offline and on the loopback interface unless told otherwise; prints its URL. The UI lives in
``viz_app`` (``viz_app.ui.build_app``); this file only parses arguments and launches.
"""
from __future__ import annotations

import os

# Offline before anything imports gradio, huggingface_hub or ultralytics: no analytics, no hub
# look-ups, no ultralytics connectivity checks or downloads.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "true")

import argparse  # noqa: E402
import sys  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="DeformLens: see what the DCNv3 layers of a YOLOv8 detector learned.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--model", help="checkpoint to select first (default: assets/models/dcnv3-yolov8n.pt, "
                                        "else the first .pt in --models-dir, else an untrained DCNv3-YOLOv8n)")
    parser.add_argument("--models-dir", help="folder of .pt checkpoints to offer besides the bundled ones")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from dcnv3 import CheckpointError
    from viz_app.models import MAX_UPLOAD_BYTES, ModelRegistry
    from viz_app.ui import CSS, THEME, build_app

    if args.models_dir and not os.path.isdir(args.models_dir):
        sys.exit(f"error: --models-dir {args.models_dir}: no such folder")
    try:
        registry = ModelRegistry(models_dir=args.models_dir, model=args.model)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    demo = build_app(registry)
    demo.queue(default_concurrency_limit=1)
    _, local_url, _ = demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False,
                                  show_error=True, quiet=True, prevent_thread_lock=True,
                                  max_file_size=MAX_UPLOAD_BYTES, theme=THEME, css=CSS)
    print(f"DeformLens is running at {local_url}  (Ctrl+C to stop)", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    main()
