"""The Learn tab's "watch it learn": wall time of one full run, against the 60 s target.

    python benchmarks/bench_lesson.py [--iterations 150] [--threads N]

What the button runs (``dcnv3.lesson.watch.watch_learn`` on the bundled lesson network, seed 0,
a snapshot every 5 iterations): the frozen layers over the scene pool, then ``--iterations``
updates of the deepest DCNv3 layer's offset and mask projections, each snapshot drawn as the tab
draws it (``viz_app.views.lesson_view.watch_picture`` and ``watch_figure``). Printed: the total, the
set-up, the mean |offset| at the start and the end, and the ratio of the total to the target.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "true")

TARGET_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=None, help="default: the button's (ITERATIONS)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    import torch

    from dcnv3.lesson.network import BUNDLED_LESSON, load_lesson
    from dcnv3.lesson.watch import ITERATIONS, probe_scene, watch_learn
    from viz_app.views import lesson_view

    if args.threads:
        torch.set_num_threads(args.threads)
    iterations = args.iterations or ITERATIONS
    model, _ = load_lesson(BUNDLED_LESSON)
    start = time.perf_counter()
    image = probe_scene(0).image
    snapshots = []
    for snapshot in watch_learn(model, seed=0, iterations=iterations, every=5):
        snapshots.append(snapshot)
        lesson_view.watch_picture(image, snapshot, snapshots[0].points)
        lesson_view.watch_figure(snapshots)
    total = time.perf_counter() - start
    print(
        f"watch it learn ({iterations} iterations, torch threads {torch.get_num_threads()}): {total:.1f} s "
        f"(set-up {snapshots[0].seconds:.1f} s); mean |offset| {snapshots[0].mean_offset:.2f} -> "
        f"{snapshots[-1].mean_offset:.2f} cells, at the watched pixel {snapshots[-1].cell_offset:.2f}; "
        f"loss {snapshots[0].loss:.2f} -> {snapshots[-1].loss:.2f}; / {TARGET_S:.0f} s target = {total / TARGET_S:.2f}"
    )
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import emit

    emit("lesson", [(f"watch it learn, {iterations} iterations / {TARGET_S:.0f} s", total / TARGET_S, "<= 1")])


if __name__ == "__main__":
    main()
