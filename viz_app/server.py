"""DeformLens web app server: ``python app.py`` in a checkout, ``deformlens-app`` where the package
is installed; both take ``[--host 127.0.0.1] [--port 7860] [--model PATH] [--models-dir DIR]
[--max-upload-mb 400] [--keep-files-minutes 1440]``.

Runs offline and on the loopback interface unless told otherwise; prints its URL. Uploads above
``--max-upload-mb`` are refused before they reach the app; uploads and everything made for users
are removed ``--keep-files-minutes`` after they were written (and all of it when the server stops).
The UI lives in ``viz_app`` (``viz_app.ui.build_app`` of a ``viz_app.state.context.AppContext``); this module
only parses arguments, makes the context and launches.
"""

from __future__ import annotations

import os

# Offline before anything imports gradio, huggingface_hub or ultralytics: no analytics, no hub
# look-ups, no ultralytics connectivity checks or downloads.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("YOLO_OFFLINE", "true")

import argparse
import atexit
import shutil
import signal
import sys
import tempfile

# gradio queues per event listener: each listener (an endpoint, a click, a slider) runs one request
# at a time, different listeners run side by side on gradio's worker threads (40). What keeps one
# model run at a time is the Analyser's model_lock (probe, video batches, the Learn toy); the
# receptive fields' gradient passes have their own lock in dcnv3.analysis.receptive_field; re-renders from a
# cached run take no lock.
QUEUE_CONCURRENCY = 1
QUEUE_MAX_SIZE = 64  # waiting requests beyond this are turned away at once ("queue is full")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="DeformLens: see what the deformable layers (DCNv2, DCNv3, DCNv4) of a YOLO detector learned."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--model",
        help="checkpoint to select first (default: the bundled dcnv3-yolov8n.pt, "
        "else the first .pt in --models-dir, else an untrained DCNv3-YOLOv8n)",
    )
    parser.add_argument("--models-dir", help="folder of .pt checkpoints to offer besides the bundled ones")
    parser.add_argument(
        "--max-upload-mb", type=float, default=400, help="largest upload accepted, image or checkpoint (default 400 MB)"
    )
    parser.add_argument(
        "--keep-files-minutes",
        type=float,
        default=1440,
        help="remove uploads and generated files this long after they were written (default 1440, a day)",
    )
    args = parser.parse_args(argv)
    if args.max_upload_mb <= 0 or args.keep_files_minutes <= 0:
        parser.error("--max-upload-mb and --keep-files-minutes must be positive")
    return args


def _private_upload_folder() -> str | None:
    """Give gradio a cache folder of this process' own (uploads and served copies), removed at
    exit, unless GRADIO_TEMP_DIR names one already; returns it (None when the user chose one:
    the sweeper then leaves it to gradio's own deletion, as it may be shared)."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    folder = tempfile.mkdtemp(prefix="deformlens_uploads_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["GRADIO_TEMP_DIR"] = folder
    return folder


def main(argv=None) -> None:
    args = parse_args(argv)
    upload_folder = _private_upload_folder()  # before gradio reads GRADIO_TEMP_DIR
    from dcnv3 import yolo
    from dcnv3.yolo.checkpoints import CheckpointError
    from viz_app.state.context import AppContext
    from viz_app.state.models import ModelRegistry
    from viz_app.state.retention import Sweeper, delete_cache_setting
    from viz_app.ui import CSS, THEME, build_app

    if args.models_dir and not os.path.isdir(args.models_dir):
        sys.exit(f"error: --models-dir {args.models_dir}: no such folder")
    max_upload = int(args.max_upload_mb * 2**20)
    yolo.prepare_runtime()  # offline, plot fonts, every core: this process is ours
    yolo.register()
    yolo.keep_freed_memory()  # every forward reuses the last one's memory instead of faulting it in
    try:
        registry = ModelRegistry(models_dir=args.models_dir, model=args.model, max_upload_bytes=max_upload)
    except CheckpointError as error:
        sys.exit(f"error: {error}")
    context = AppContext.create(registry)
    demo = build_app(context)
    frequency, age = delete_cache_setting(args.keep_files_minutes)
    demo.delete_cache = (frequency, age)  # read by launch(): gradio drops the cached files it tracks
    Sweeper([context.files.root, *filter(None, [upload_folder])], max_age_s=age, every_s=frequency).start()
    demo.queue(default_concurrency_limit=QUEUE_CONCURRENCY, max_size=QUEUE_MAX_SIZE)
    _, local_url, _ = demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        show_error=True,
        quiet=True,
        prevent_thread_lock=True,
        max_file_size=max_upload,
        theme=THEME,
        css=CSS,
    )
    print(f"DeformLens is running at {local_url}  (Ctrl+C to stop)", flush=True)
    # `kill` (SIGTERM, as from a service manager) stops it like Ctrl+C, so the exit handlers run
    # and the uploads and generated files go with the server.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        demo.block_thread()  # returns on Ctrl+C or SIGTERM
    except KeyboardInterrupt:
        pass
    demo.close()  # stops the queue's workers too, so the process can exit


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
