"""Opt-in capture of what every DCNv3 layer predicted in the last forward pass.

Forward hooks are attached to each DCNv3's ``offset`` and ``mask`` Linear heads only inside the
``capture`` context, so a model that is not being probed pays nothing::

    with dcnv3.capture(model) as layers:
        model(x)
    layers["model.4.m.0.cv2.dcnv3"].offsets   # (N, H, W, G, P, 2) feature cells, (dx, dy)
    layers["model.4.m.0.cv2.dcnv3"].weights   # (N, H, W, G, P) softmax weights
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from .module import DCNv3, softmax_over_points

__all__ = ["CapturedLayer", "capture", "dcnv3_modules"]


def dcnv3_modules(model: nn.Module) -> list[tuple[str, DCNv3]]:
    """Every DCNv3 submodule of ``model`` with its qualified name, in forward (registration) order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DCNv3)]


@dataclass
class CapturedLayer:
    """Raw head outputs of one DCNv3 layer from the last forward (detached, on the model's device)."""
    module: DCNv3
    offset_raw: torch.Tensor | None = None  # (N, H, W, G*P*2), the ``offset`` Linear's output
    mask_logits: torch.Tensor | None = None  # (N, H, W, G*P), the ``mask`` Linear's output
    input_hw: tuple[int, int] | None = None  # (H_in, W_in) of the layer's channels-last input
    calls: int = field(default=0)

    @property
    def offsets(self) -> torch.Tensor:
        """(N, H, W, G, P, 2) learned offsets (dx, dy) in feature cells, before offset_scale."""
        n, h, w, _ = self.offset_raw.shape
        return self.offset_raw.reshape(n, h, w, self.module.group, self.module.points, 2)

    @property
    def weights(self) -> torch.Tensor:
        """(N, H, W, G, P) modulation weights: softmax over each group's P points (float32+)."""
        n, h, w, _ = self.mask_logits.shape
        logits = self.mask_logits
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        weights = softmax_over_points(logits, self.module.points)  # the layer's own softmax
        return weights.reshape(n, h, w, self.module.group, self.module.points)


@contextlib.contextmanager
def capture(model: nn.Module, modules: list[tuple[str, DCNv3]] | None = None):
    """Record the offset and mask head outputs of every DCNv3 in ``model`` while inside the block.

    Yields a dict {qualified module name: CapturedLayer}, filled by each forward; a later forward
    inside the same block overwrites the previous values. ``modules``: the model's
    ``dcnv3_modules`` if the caller has them already (walking a model's modules costs ~0.3 ms).
    """
    records: dict[str, CapturedLayer] = {}
    handles = []

    def make_hook(record: CapturedLayer, attribute: str):
        def hook(_module, _inputs, output):
            setattr(record, attribute, output.detach())
            if attribute == "offset_raw":
                record.calls += 1
        return hook

    try:
        for name, module in (dcnv3_modules(model) if modules is None else modules):
            record = records[name] = CapturedLayer(module)
            handles.append(module.offset.register_forward_hook(make_hook(record, "offset_raw")))
            handles.append(module.mask.register_forward_hook(make_hook(record, "mask_logits")))
            handles.append(module.register_forward_pre_hook(
                lambda _module, inputs, record=record: setattr(record, "input_hw", tuple(inputs[0].shape[1:3]))))
        yield records
    finally:
        for handle in handles:
            handle.remove()
