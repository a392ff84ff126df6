"""Copies of a DCNv3 model broken on purpose, for the health-flag tests: direct edits of each
layer's offset and mask heads (the ``offset`` Linear, G*P*2 outputs laid out (G, P, 2), and the
``mask`` Linear, G*P logits laid out (G, P), before the softmax), so that a broken copy is a real
model that saves and loads like any other checkpoint.

Each breakage names the flag it must raise (``EXPECTED_FLAG``). ``record_broken_copy`` breaks any
operator (DCNv2, DCNv3, DCNv4) through what its forward hands over instead.
"""

import copy
from dataclasses import dataclass

import torch

from dcnv3.ops.capture import dcnv3_modules

BREAKAGES = ("zero_offsets", "blown_up", "saturated", "same_groups")
EXPECTED_FLAG = {
    "zero_offsets": "collapsed",
    "blown_up": "exploding",
    "saturated": "saturated",
    "same_groups": "same_groups",
}
BLOW_UP = 10.0  # offsets times this: healthy layers move 0.9-2 cells, so 9-20 cells


@torch.no_grad()
def break_module(module, how: str) -> None:
    """Break one DCNv3 module in place, as ``how`` says (one of ``BREAKAGES``)."""
    groups, points = module.group, module.points
    if how == "zero_offsets":  # every offset exactly 0: the regular grid
        module.offset.weight.zero_()
        module.offset.bias.zero_()
    elif how == "blown_up":
        module.offset.weight.mul_(BLOW_UP)
        module.offset.bias.mul_(BLOW_UP)
    elif how == "saturated":  # logits 30 on the centre point, 0 elsewhere: softmax ~one-hot (e^-30)
        module.mask.weight.zero_()
        bias = torch.zeros(groups, points)
        bias[:, points // 2] = 30.0
        module.mask.bias.copy_(bias.flatten())
    elif how == "same_groups":  # every group's offset and mask rows copied from group 0
        for head, per_group in ((module.offset, points * 2), (module.mask, points)):
            weight = head.weight.view(groups, per_group, -1)
            weight.copy_(weight[:1].expand_as(weight).clone())
            bias = head.bias.view(groups, per_group)
            bias.copy_(bias[:1].expand_as(bias).clone())
    else:
        raise ValueError(f"unknown breakage {how!r}; one of {BREAKAGES}")


def yolo_copy(model):
    """A deep copy of an ultralytics YOLO without its predictor: once ``predict`` ran, the YOLO
    holds a ``BasePredictor`` whose ``threading.Lock`` cannot be deep-copied (the session-wide
    bundled model is predicted on by earlier tests); the copy builds its own on first use."""
    predictor, model.predictor = model.predictor, None
    try:
        return copy.deepcopy(model)
    finally:
        model.predictor = predictor


def broken_copy(model, how: str, layers: list[str] | None = None):
    """A deep copy of an ultralytics YOLO whose DCNv3 layers ``layers`` (names; None: all) are
    broken as ``how`` says. ``same_groups`` skips single-group layers (nothing to copy)."""
    broken = yolo_copy(model)
    for name, module in dcnv3_modules(broken.model):
        if (layers is None or name in layers) and not (how == "same_groups" and module.group < 2):
            break_module(module, how)
    return broken


def breakable_layers(model, how: str) -> list[str]:
    """The layers ``broken_copy(model, how)`` changes."""
    return [name for name, module in dcnv3_modules(model.model) if not (how == "same_groups" and module.group < 2)]


# -- any operator: break what a layer hands over (``dcnv3.ops.sampling_hooks``) ------------------------

RECORD_BREAKAGES = ("zero_offsets", "blown_up", "saturated", "vanished", "untrained")
RECORD_EXPECTED_FLAG = {**EXPECTED_FLAG, "vanished": "vanished", "untrained": "untrained"}


@dataclass(frozen=True)
class RecordBreak:
    """Changes a deformable layer's offsets (N, H, W, G, P, 2) and weights (N, H, W, G, P) in the
    record layout, as ``dcnv3.ops.sampling_hooks.SamplingOverride`` does, for every operator alike:
    the layer then samples with the broken values, and later layers see what it computes."""

    how: str

    def apply(self, offsets: torch.Tensor, weights: torch.Tensor):
        if self.how in ("zero_offsets", "untrained"):
            offsets = torch.zeros_like(offsets)
        elif self.how == "blown_up":
            offsets = offsets * BLOW_UP
        if self.how == "saturated":  # the group's total |m| on the centre point, 0 elsewhere
            total = weights.abs().sum(dim=-1).clamp(max=1.0)  # a softmax or sigmoid stays in [0, 1]
            saturated = torch.zeros_like(weights)
            saturated[..., weights.shape[-1] // 2] = total
            weights = saturated
        elif self.how in ("vanished", "untrained"):
            weights = weights * 1e-4
        return offsets, weights


def record_broken_copy(model, how: str, layers: list[str] | None = None):
    """A deep copy of an ultralytics YOLO whose deformable layers ``layers`` (names; None: all)
    hand over broken records (``RecordBreak(how)``) in every probe of it: the break is attached to
    the probe's cached inference copy (``dcnv3.analysis.probe.inference_model``), since DCNv2 and DCNv4
    drop attached hooks when deep-copied."""
    from dcnv3.analysis.probe import inference_model
    from dcnv3.ops.capture import deformable_modules
    from dcnv3.ops.sampling_hooks import OVERRIDE_SLOT

    if how not in RECORD_BREAKAGES:
        raise ValueError(f"unknown breakage {how!r}; one of {RECORD_BREAKAGES}")
    broken = yolo_copy(model)
    for name, module in deformable_modules(inference_model(broken)):
        if layers is None or name in layers:
            module.__dict__[OVERRIDE_SLOT] = RecordBreak(how)
    return broken
