"""Training of the lesson network and its plain twin: the loss, the loop, and the bundled recipe.

    python -m dcnv3.lesson.train                      # both, into assets/models/lesson/ (~19 min, 2 cores)
    python -m dcnv3.lesson.train --steps 50 --out /tmp/lesson   # a quick try

Scenes come fresh from ``dcnv3.lesson.data`` (seed 0, split "train"; the measurements use
another seed), batch after batch, so the network never sees a scene twice. Both networks see
the same scenes in the same order. The DCNv3 layers' offset and mask projections learn at
``OFFSET_LR_FACTOR`` times the base rate: they start at zero (the regular grid) and must travel
several cells, which at the base rate takes longer than the whole run.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcnv3.lesson.data import lesson_batch, targets
from dcnv3.lesson.network import (
    AXIS,
    BUNDLED_LESSON_DIR,
    CLASSES,
    EXTENT,
    LessonConfig,
    LessonNet,
    offset_parameters,
    save_lesson,
    to_input,
)

__all__ = [
    "lesson_loss",
    "target_tensors",
    "make_optimizer",
    "train_lesson",
    "main",
    "OFFSET_LR_FACTOR",
    "TRAIN_SEED",
    "BUNDLED_STEPS",
]

OFFSET_LR_FACTOR = 10.0
TRAIN_SEED = 0
BUNDLED_STEPS = 1100
BATCH = 16
BASE_LR = 1.5e-3
EXTENT_WEIGHT = 2.0  # the extent is what asks the sampling to reach the shape's edges


def target_tensors(scenes) -> dict[str, torch.Tensor]:
    """``lesson_data.targets`` of each scene stacked: heat (N, H, W), positive (N, H, W) bool,
    class_id (N, H, W) int64, extent (N, H, W, 3)."""
    per_scene = [targets(scene) for scene in scenes]
    return {key: torch.from_numpy(np.stack([t[key] for t in per_scene])) for key in per_scene[0]}


def lesson_loss(output: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's focal loss on the objectness, cross-entropy on the class and smooth L1 on the
    log extent at the positive cells, and (a head with ``AXIS`` channels) smooth L1 on the bars' axis.
    ``output`` (N, HEAD_CHANNELS, H, W) -> (total, parts)."""
    heat = target["heat"]
    probability = torch.sigmoid(output[:, 0]).clamp(1e-4, 1 - 1e-4)
    peak = heat >= 1.0
    positives = max(int(peak.sum()), 1)
    focal = (
        -(
            torch.where(
                peak,
                (1 - probability) ** 2 * torch.log(probability),
                (1 - heat) ** 4 * probability**2 * torch.log(1 - probability),
            )
        ).sum()
        / positives
    )
    mask = target["positive"]
    cells = output.permute(0, 2, 3, 1)[mask]  # (M, HEAD_CHANNELS)
    zero = output.sum() * 0.0
    if len(cells):
        classes = F.cross_entropy(cells[:, CLASSES], target["class_id"][mask])
        extent = F.smooth_l1_loss(cells[:, EXTENT], target["extent"][mask], beta=0.1)
    else:
        classes = extent = zero
    axis = zero
    bars = target["axis_mask"]
    if output.shape[1] >= AXIS.stop and bool(bars.any()):
        axis = F.smooth_l1_loss(output.permute(0, 2, 3, 1)[bars][:, AXIS], target["axis"][bars], beta=0.1)
    total = focal + classes + EXTENT_WEIGHT * extent + axis
    return total, {"objectness": focal.item(), "class": classes.item(), "extent": extent.item(), "axis": axis.item()}


def make_optimizer(model: LessonNet, lr: float = BASE_LR) -> torch.optim.Optimizer:
    """AdamW, the offset and mask projections at ``OFFSET_LR_FACTOR`` x ``lr`` without weight decay."""
    fast = offset_parameters(model)
    fast_ids = {id(p) for p in fast}
    slow = [p for p in model.parameters() if id(p) not in fast_ids]
    groups = [{"params": slow, "lr": lr, "weight_decay": 1e-4}]
    if fast:
        groups.append({"params": fast, "lr": lr * OFFSET_LR_FACTOR, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def train_lesson(
    config: LessonConfig,
    steps: int = BUNDLED_STEPS,
    seed: int = TRAIN_SEED,
    batch: int = BATCH,
    lr: float = BASE_LR,
    log=print,
    checkpoint=None,
) -> tuple[LessonNet, dict]:
    """Train one network from scratch on fresh scenes; returns (model in eval mode, recipe facts).

    Warm-up over the first 5 % of steps, then cosine decay to 5 % of the rate. ``checkpoint``:
    called with (model, step) every 200 steps (a long run can be looked at before it ends).
    """
    torch.manual_seed(seed)
    model = LessonNet(config).train()
    optimizer = make_optimizer(model, lr)
    base_rates = [group["lr"] for group in optimizer.param_groups]
    warmup = max(1, steps // 20)
    start = time.perf_counter()
    history = []
    for step in range(steps):
        scale = (
            (step + 1) / warmup
            if step < warmup
            else 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        )
        for group, rate in zip(optimizer.param_groups, base_rates):
            group["lr"] = rate * scale
        scenes = lesson_batch(seed, "train", step * batch, batch)
        loss, parts = lesson_loss(model(to_input([s.image for s in scenes])), target_tensors(scenes))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        history.append(loss.item())
        if checkpoint is not None and step % 200 == 199:
            checkpoint(model, step + 1)
        if step % 50 == 0 or step == steps - 1:
            log(
                f"{'dcnv3' if config.deformable else 'plain'} step {step}/{steps} loss {loss.item():.3f} "
                + " ".join(f"{k} {v:.3f}" for k, v in parts.items())
                + f" ({time.perf_counter() - start:.0f} s)"
            )
    recipe = {
        "steps": steps,
        "batch": batch,
        "seed": seed,
        "base_lr": lr,
        "offset_lr_factor": OFFSET_LR_FACTOR,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "final_loss_mean_last_50": round(float(np.mean(history[-50:])), 4),
    }
    return model.eval(), recipe


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcnv3.lesson.train", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=BUNDLED_STEPS)
    parser.add_argument("--out", default=str(BUNDLED_LESSON_DIR), help="folder for lesson-dcnv3.pt and lesson-plain.pt")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=("dcnv3", "plain"), default=None)
    parser.add_argument(
        "--no-axis-head",
        dest="axis_head",
        action="store_false",
        help="leave out the head's bar-axis output (cos 2a, sin 2a); the bundled networks have it",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    for name, deformable in (("dcnv3", True), ("plain", False)):
        if args.only and args.only != name:
            continue

        def checkpoint(model, step, name=name):
            save_lesson(model, out / f"lesson-{name}.partial.pt", {"steps_done": step})

        model, recipe = train_lesson(
            LessonConfig(deformable=deformable, axis_head=args.axis_head), steps=args.steps, checkpoint=checkpoint
        )
        path = save_lesson(model, out / f"lesson-{name}.pt", recipe)
        print(f"saved {path}: {json.dumps(recipe)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
