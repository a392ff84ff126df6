"""Opt-in capture of what every deformable layer (DCNv3, DCNv4, DCNv2) sampled with in a forward.

Inside the ``capture`` context each deformable module hands its offsets and modulation weights to
a record (``dcnv3.ops.sampling_hooks.hand_over``), already in the one record layout of all three
operators: nothing is recomputed, and outside the context a forward pays one dictionary lookup
per layer::

    with dcnv3.capture(model) as layers:
        model(x)
    layers["model.4.m.0.cv2.dcnv3"].offsets   # (N, H, W, G, P, 2) feature cells, (dx, dy)
    layers["model.4.m.0.cv2.dcnv3"].weights   # (N, H, W, G, P), kind in .weight_kind
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from dcnv3.ops.dcnv3 import DCNv3
from dcnv3.ops.sampling_hooks import CAPTURE_SLOT, is_deformable

__all__ = ["CapturedLayer", "capture", "dcnv3_modules", "deformable_modules"]


def dcnv3_modules(model: nn.Module) -> list[tuple[str, DCNv3]]:
    """Every DCNv3 submodule of ``model`` with its qualified name, in forward (registration) order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, DCNv3)]


def deformable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every deformable submodule (DCNv3, DCNv4, DCNv2: ``sampling_hooks.is_deformable``) of
    ``model`` with its qualified name, in registration order."""
    return [(name, module) for name, module in model.named_modules() if is_deformable(module)]


@dataclass
class CapturedLayer:
    """What one deformable layer sampled with in the last forward (detached, on the model's device).

    ``offsets`` (N, H_out, W_out, G, P, 2) (dx, dy) feature cells before offset_scale and
    ``weights`` (N, H_out, W_out, G, P) in the record layout of ``dcnv3.ops.sampling_hooks`` (float32
    for half-precision models); ``raw``: the operator's own tensors by name (DCNv3: ``offset``
    (N, H, W, G*P*2) and ``mask_logits`` (N, H, W, G*P), its two Linear outputs).
    """

    module: nn.Module
    offsets: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    input_hw: tuple[int, int] | None = None  # (H_in, W_in) of the layer's input map
    raw: dict = field(default_factory=dict)
    calls: int = field(default=0)

    def store(
        self, offsets: torch.Tensor, weights: torch.Tensor, input_hw: tuple[int, int], **raw: torch.Tensor
    ) -> None:
        """Called through ``hand_over`` by the module's forward."""
        weights = weights.detach()
        self.offsets = offsets.detach()
        self.weights = weights.float() if weights.dtype in (torch.float16, torch.bfloat16) else weights
        self.input_hw = tuple(input_hw)
        self.raw = {name: tensor.detach() for name, tensor in raw.items()}
        self.calls += 1

    @property
    def ran(self) -> bool:
        """Whether the module ran inside the capture (a branch a model never takes does not)."""
        return self.offsets is not None

    @property
    def weight_kind(self) -> str:
        """The module's ``weight_kind``: "softmax" (DCNv3), "free" (DCNv4) or "sigmoid" (DCNv2)."""
        return type(self.module).weight_kind

    @property
    def offset_raw(self) -> torch.Tensor | None:
        """DCNv3's ``offset`` Linear output (N, H, W, G*P*2) (None for other operators)."""
        return self.raw.get("offset")

    @property
    def mask_logits(self) -> torch.Tensor | None:
        """DCNv3's ``mask`` Linear output (N, H, W, G*P), before the softmax (None for others)."""
        return self.raw.get("mask_logits")


@contextlib.contextmanager
def capture(model: nn.Module, modules: list[tuple[str, nn.Module]] | None = None):
    """Record the offsets and weights of every deformable module in ``model`` while inside the block.

    Yields a dict {qualified module name: CapturedLayer}, filled by each forward; a later forward
    inside the same block overwrites the previous values. ``modules``: the model's
    ``deformable_modules`` if the caller has them already (walking a model's modules costs ~0.3 ms).
    """
    records: dict[str, CapturedLayer] = {}
    attached = []
    try:
        for name, module in deformable_modules(model) if modules is None else modules:
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
