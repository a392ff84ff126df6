"""Opt-in capture of what every DCNv3 layer predicted in the last forward pass.

Inside the ``capture`` context each DCNv3 hands its offsets, mask logits and the softmax weights
it sampled with to a record (``CAPTURE_SLOT`` in the module's ``__dict__``): nothing is
recomputed, and outside the context a forward pays one dictionary lookup per layer::

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

from .module import CAPTURE_SLOT, DCNv3

__all__ = ["CapturedLayer", "capture", "dcnv3_modules"]


def dcnv3_modules(model: nn.Module) -> list[tuple[str, DCNv3]]:
    """Every DCNv3 submodule of ``model`` with its qualified name, in forward (registration) order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DCNv3)]


@dataclass
class CapturedLayer:
    """What one DCNv3 layer computed in the last forward (detached, on the model's device)."""
    module: DCNv3
    offset_raw: torch.Tensor | None = None  # (N, H, W, G*P*2), the ``offset`` Linear's output
    mask_logits: torch.Tensor | None = None  # (N, H, W, G*P), the ``mask`` Linear's output
    mask_weights: torch.Tensor | None = None  # (N, H, W, G*P), their softmax, as the layer used it
    input_hw: tuple[int, int] | None = None  # (H_in, W_in) of the layer's channels-last input
    calls: int = field(default=0)

    def store(self, offset: torch.Tensor, logits: torch.Tensor, weights: torch.Tensor,
              input_hw: tuple[int, int]) -> None:
        """Called by ``DCNv3.forward`` with its offsets, mask logits and softmax weights."""
        self.offset_raw, self.mask_logits = offset.detach(), logits.detach()
        self.mask_weights, self.input_hw = weights.detach(), input_hw
        self.calls += 1

    @property
    def offsets(self) -> torch.Tensor:
        """(N, H, W, G, P, 2) learned offsets (dx, dy) in feature cells, before offset_scale."""
        n, h, w, _ = self.offset_raw.shape
        return self.offset_raw.reshape(n, h, w, self.module.group, self.module.points, 2)

    @property
    def weights(self) -> torch.Tensor:
        """(N, H, W, G, P) modulation weights: softmax over each group's P points (float32+)."""
        n, h, w, _ = self.mask_weights.shape
        weights = self.mask_weights
        weights = weights.float() if weights.dtype in (torch.float16, torch.bfloat16) else weights
        return weights.reshape(n, h, w, self.module.group, self.module.points)


@contextlib.contextmanager
def capture(model: nn.Module, modules: list[tuple[str, DCNv3]] | None = None):
    """Record the offset and mask head outputs of every DCNv3 in ``model`` while inside the block.

    Yields a dict {qualified module name: CapturedLayer}, filled by each forward; a later forward
    inside the same block overwrites the previous values. ``modules``: the model's
    ``dcnv3_modules`` if the caller has them already (walking a model's modules costs ~0.3 ms).
    """
    records: dict[str, CapturedLayer] = {}
    attached = []
    try:
        for name, module in (dcnv3_modules(model) if modules is None else modules):
            record = records[name] = CapturedLayer(module)
            # A tuple per module, so nested captures each get their own record.
            module.__dict__[CAPTURE_SLOT] = module.__dict__.get(CAPTURE_SLOT, ()) + (record,)
            attached.append((module, record))
        yield records
    finally:
        for module, record in attached:
            remaining = tuple(r for r in module.__dict__.get(CAPTURE_SLOT, ()) if r is not record)
            if remaining:
                module.__dict__[CAPTURE_SLOT] = remaining
            else:
                module.__dict__.pop(CAPTURE_SLOT, None)
