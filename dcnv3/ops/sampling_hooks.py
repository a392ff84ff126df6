"""The two hooks every deformable module's forward offers: capture (record what it sampled with)
and override (sample the regular grid, or with uniform weights, instead of what it predicted).

DeformLens has three deformable operators (``dcnv3.DCNv3``, ``dcnv3.DCNv4``, ``dcnv3.ops.dcnv2.DCNv2``).
Each follows one small protocol, so that capture, the probe and ablations treat them alike:

* attributes ``kernel_size``, ``stride``, ``pad``, ``dilation`` (ints, square kernels),
  ``group`` (G), ``points`` (P), ``offset_scale``, ``remove_center`` and the class attribute
  ``weight_kind``, a key of ``WEIGHT_KINDS``, and a method ``sampling_head_parameters()`` that
  yields the parameters predicting offsets and weights (the trainer gives them their own
  learning rate);
* its forward calls ``hand_over(self, offsets, weights, input_hw, **raw)`` once, between predicting
  its offsets and weights and sampling, with both in the **record layout** below, and samples with
  the tensors it gets back (they differ only inside ``override_sampling``). A module whose own
  layout differs (DCNv2's channels-first, (dy, dx), row-major points) converts only when
  ``hooked(self)`` says a hook is attached, so a plain forward pays one dictionary lookup;
* it derives from ``HookFreeState``, so that a copy or pickle made inside a capture or an
  override carries neither along.

Record layout, for every operator:

* ``offsets`` (N, H_out, W_out, G, P, 2): (dx, dy) in feature cells of the layer's input, before
  ``offset_scale``; point p = i*K + j over the K x K kernel, i walking x (columns), j walking y
  (rows) (InternImage's order; with ``remove_center`` the centre is left out, later points move
  down by one);
* ``weights`` (N, H_out, W_out, G, P): the modulation weight each point is multiplied by, as the
  operator used it (after DCNv3's softmax or DCNv2's sigmoid; DCNv4's raw scalars).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "CAPTURE_SLOT",
    "OVERRIDE_SLOT",
    "OPERATOR_OF_KIND",
    "WEIGHT_KINDS",
    "HookFreeState",
    "describe_layers",
    "SamplingOverride",
    "hand_over",
    "hooked",
    "is_deformable",
    "override_sampling",
]

# While ``dcnv3.ops.capture`` / ``override_sampling`` is active, a module's ``__dict__`` holds under
# these keys what its forward reports to / is changed by (a plain dict lookup when nothing is).
CAPTURE_SLOT = "_dcnv3_capture_records"
OVERRIDE_SLOT = "_dcnv3_sampling_override"

# What a layer's modulation weights are, by its ``weight_kind``: views that size points by weight,
# take the weights' entropy or flag their health read the kind.
WEIGHT_KINDS = {
    "softmax": "softmax over each group's P points (DCNv3): each in [0, 1], each group sums to 1",
    "sigmoid": "sigmoid of each point alone (DCNv2): each in [0, 1], no constraint across points",
    "free": "unnormalised scalars (DCNv4): signed and unbounded, 0 at initialisation",
}
# The operator that gives each kind (one kind per operator, so texts can name the operator).
OPERATOR_OF_KIND = {"softmax": "DCNv3", "sigmoid": "DCNv2", "free": "DCNv4"}


def describe_layers(weight_kinds) -> str:
    """How a text names a model's deformable layers, given each layer's ``weight_kind``:
    "5 DCNv3 layers", "1 DCNv2 layer", "4 deformable layers (DCNv2, DCNv3)", "no deformable layer"."""
    kinds = list(weight_kinds)
    if not kinds:
        return "no deformable layer"
    operators = sorted({OPERATOR_OF_KIND.get(kind, kind) for kind in kinds})
    noun = "layer" if len(kinds) == 1 else "layers"
    if len(operators) == 1:
        return f"{len(kinds)} {operators[0]} {noun}"
    return f"{len(kinds)} deformable {noun} ({', '.join(operators)})"


def is_deformable(module: nn.Module) -> bool:
    """Whether ``module`` follows the deformable-module protocol (DCNv3, DCNv4 or DCNv2)."""
    return getattr(type(module), "weight_kind", None) in WEIGHT_KINDS


def hooked(module: nn.Module) -> bool:
    """Whether a capture or an override is attached to ``module`` (its forward must hand over)."""
    state = module.__dict__
    return CAPTURE_SLOT in state or OVERRIDE_SLOT in state


class HookFreeState:
    """Mixin of every deformable module (before ``nn.Module`` in its bases): its pickled or
    deep-copied state leaves out the capture records and the override attached to it, so a model
    saved or copied inside ``dcnv3.ops.capture`` or ``override_sampling`` carries neither."""

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state.pop(CAPTURE_SLOT, None)
        state.pop(OVERRIDE_SLOT, None)
        return state


def hand_over(
    module: nn.Module, offsets: torch.Tensor, weights: torch.Tensor, input_hw: tuple[int, int], **raw: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Called by a deformable forward: apply an attached override, then give the result to every
    attached capture record, and return the (offsets, weights) to sample with.

    Args:
        offsets: (N, H_out, W_out, G, P, 2) in the record layout (module docstring).
        weights: (N, H_out, W_out, G, P), as the operator multiplies its samples by.
        input_hw: (H_in, W_in) of the layer's input map.
        raw: the operator's own tensors, kept by capture records under these names (e.g. DCNv3's
            ``offset`` and ``mask_logits`` Linear outputs), for tests against fork outputs.
    """
    override = module.__dict__.get(OVERRIDE_SLOT)
    if override is not None:
        offsets, weights = override.apply(offsets, weights)
    for record in module.__dict__.get(CAPTURE_SLOT, ()):
        record.store(offsets, weights, input_hw, **raw)
    return offsets, weights


@dataclass(frozen=True)
class SamplingOverride:
    """What a layer samples with instead of its prediction, for ablations.

    ``offsets_to_grid``: every offset 0, so the layer samples its regular K x K grid.
    ``uniform_weights``: each group's P weights replaced by their mean, which keeps each group's
    total (for a softmax that is 1/P each: the plain average; for a sigmoid or DCNv4's free
    scalars the same total spread evenly, so only the weights' *shape* over the points is removed).
    """

    offsets_to_grid: bool = True
    uniform_weights: bool = False

    def apply(self, offsets: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, G, P, 2), (N, H, W, G, P) -> the same shapes, overridden."""
        if self.offsets_to_grid:
            offsets = torch.zeros_like(offsets)
        if self.uniform_weights:
            weights = weights.mean(dim=-1, keepdim=True).expand_as(weights).contiguous()
        return offsets, weights


@contextlib.contextmanager
def override_sampling(modules, offsets_to_grid: bool = True, uniform_weights: bool = False):
    """Inside the block, the given deformable modules sample as ``SamplingOverride`` says.

    ``modules``: deformable modules, or (name, module) pairs as ``dcnv3.ops.capture.deformable_modules``
    gives them. The previous override of each module (if any) is restored on exit::

        with override_sampling(deformable_modules(model)[:1]):
            model(x)   # the first layer samples its regular grid
    """
    override = SamplingOverride(offsets_to_grid, uniform_weights)
    targets = [item[1] if isinstance(item, tuple) else item for item in modules]
    for module in targets:
        if not is_deformable(module):
            raise TypeError(f"{type(module).__name__} is not a deformable module (DCNv3, DCNv4 or DCNv2)")
    previous = [(module, module.__dict__.get(OVERRIDE_SLOT)) for module in targets]
    try:
        for module in targets:
            module.__dict__[OVERRIDE_SLOT] = override
        yield override
    finally:
        for module, before in previous:
            if before is None:
                module.__dict__.pop(OVERRIDE_SLOT, None)
            else:
                module.__dict__[OVERRIDE_SLOT] = before
