"""DCNv2 (modulated deformable convolution, Zhu et al., CVPR 2019) on ``torchvision.ops.deform_conv2d``.

The module has the constructor, parameter names and forward of the ``DCNv2`` conv block of the
YOLO ``extra_modules`` family of forks (``ultralytics/nn/extra_modules/block.py``): a full
``weight`` (C_out, C_in // groups, K, K) and ``bias`` (C_out,), a ``conv_offset_mask`` Conv2d that
predicts 3*G*K*K channels (G = ``deformable_groups``), then BatchNorm ``bn`` and activation ``act``.
The fork splits that prediction into three equal chunks (o1, o2, mask), concatenates o1 and o2
back (so the offsets are the first 2*G*K*K channels as they were) and takes the sigmoid of the
mask; torchvision then reads both in its own layout.

Two layouts meet here (``torchvision_to_record`` / ``record_to_torchvision`` convert):

* torchvision's, channels-first: ``offset`` (N, 2*G*K*K, H_out, W_out), channel
  ``g*2KK + 2q`` the **dy** and ``+1`` the **dx** of point q = ky*K + kx (row-major, ky walks
  rows); ``mask`` (N, G*K*K, H_out, W_out), channel ``g*KK + q``;
* the record layout of ``dcnv3.ops.sampling_hooks``, channels-last: offsets (N, H_out, W_out, G, P, 2)
  as (dx, dy), point p = kx*K + ky (kx walks columns); weights (N, H_out, W_out, G, P).

The forward converts only while ``hooked(self)`` (capture or override attached), and samples with
what ``hand_over`` returns, converted back. Sampling location of point (kx, ky), group g, output
cell (h, w), in input pixels (torchvision's kernel, and ``dcnv3.record.geometry``'s formula with
offset_scale 1)::

    x = w*stride - pad + kx*dilation + dx        y = h*stride - pad + ky*dilation + dy
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from dcnv3.ops.sampling_hooks import HookFreeState, hand_over, hooked

__all__ = ["DCNv2", "same_padding", "split_chunked_offset_mask", "torchvision_to_record", "record_to_torchvision"]


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """ultralytics' ``autopad(k, None, d)`` for a square kernel: half the dilated kernel's extent."""
    return (dilation * (kernel_size - 1) + 1) // 2


def split_chunked_offset_mask(offset_mask: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fork's ``chunk(offset_mask, 3, dim=1)`` -> ``(cat(o1, o2), mask)``: channels-first, every
    group's offsets in the first two chunks and every group's mask logits in the third (DCNv4's
    channels-last per-group blocks: ``dcnv3.ops.dcnv4.split_per_group_offset_mask``).

    Args:
        offset_mask: (N, 3*G*KK, H, W), the ``conv_offset_mask`` output.
        points: G*KK (all groups' points together).

    Returns:
        ``offset`` (N, 2*G*KK, H, W) in torchvision's layout (the concatenation of the first two
        chunks is the first 2*G*KK channels unchanged) and the mask logits (N, G*KK, H, W), both
        views of ``offset_mask``.
    """
    if offset_mask.shape[1] != 3 * points:
        raise ValueError(f"DCNv2 offset_mask has {offset_mask.shape[1]} channels, 3*G*K*K = {3 * points} expected")
    return offset_mask[:, : 2 * points], offset_mask[:, 2 * points :]


split_offset_mask = split_chunked_offset_mask  # the earlier name


def torchvision_to_record(
    offset: torch.Tensor, mask: torch.Tensor, group: int, kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's (offset, mask) -> the record layout.

    Args:
        offset: (N, 2*G*K*K, H, W): per group g and point q = ky*K + kx, channel g*2KK + 2q is
            dy and g*2KK + 2q + 1 is dx.
        mask: (N, G*K*K, H, W), channel g*KK + q.
        group, kernel_size: G and K.

    Returns:
        ``offsets`` (N, H, W, G, P, 2) as (dx, dy) and ``weights`` (N, H, W, G, P), P = K*K with
        point p = kx*K + ky; new contiguous tensors (autograd flows through).
    """
    n, _, h, w = offset.shape
    k = kernel_size
    # (N, G, ky, kx, (dy, dx), H, W) -> (N, H, W, G, kx, ky, (dy, dx)), then (dy, dx) -> (dx, dy).
    offsets = offset.reshape(n, group, k, k, 2, h, w).permute(0, 5, 6, 1, 3, 2, 4).flip(-1)
    weights = mask.reshape(n, group, k, k, h, w).permute(0, 4, 5, 1, 3, 2)
    return (offsets.reshape(n, h, w, group, k * k, 2).contiguous(), weights.reshape(n, h, w, group, k * k).contiguous())


def record_to_torchvision(
    offsets: torch.Tensor, weights: torch.Tensor, kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``torchvision_to_record``: (N, H, W, G, P, 2) (dx, dy) offsets and
    (N, H, W, G, P) weights, p = kx*K + ky -> (N, 2*G*K*K, H, W) offset as (dy, dx) per point
    q = ky*K + kx, and (N, G*K*K, H, W) mask; contiguous, exact (a permutation of the values)."""
    n, h, w, group, points, _ = offsets.shape
    k = kernel_size
    if points != k * k:
        raise ValueError(f"DCNv2 has K*K = {k * k} points per group, the offsets have {points}")
    # (N, H, W, G, kx, ky, (dx, dy)) -> (N, G, ky, kx, (dy, dx), H, W).
    offset = offsets.reshape(n, h, w, group, k, k, 2).flip(-1).permute(0, 3, 5, 4, 6, 1, 2)
    mask = weights.reshape(n, h, w, group, k, k).permute(0, 3, 5, 4, 1, 2)
    return offset.reshape(n, 2 * group * k * k, h, w).contiguous(), mask.reshape(n, group * k * k, h, w).contiguous()


class DCNv2(HookFreeState, nn.Module):
    """DCNv2 conv block with the ``extra_modules`` family's constructor, parameter names and forward.

    Args (the fork's ``DCNv2(in_channels, out_channels, kernel_size, stride=1, padding=None,
    groups=1, dilation=1, act=True, deformable_groups=1)``):
        in_channels, out_channels: C_in, C_out.
        kernel_size, stride, dilation: square ints.
        padding: None for ultralytics' autopad (``same_padding``).
        groups: convolution groups of ``weight`` (the fork's weight is always (C_out, C_in, K, K),
            so only 1 ran there; here the weight is (C_out, C_in // groups, K, K)).
        act: True for SiLU (ultralytics' default), a module, or False / None for none.
        deformable_groups: G, offset groups (each predicts its own K*K offsets and masks).
        conv_offset_mask: the head predicting (N, 3*G*K*K, H_out, W_out) from the input; None
            builds the fork's Conv2d(C_in, 3*G*K*K, K, stride, padding, dilation) (zero init, so an
            untrained layer samples its regular grid with every mask 0.5). The ``_Dynamic``
            variant passes its attention head (``dcnv3.yolo.blocks.dcnv2.DCNv2OffsetAttention``).

    The fork's offset Conv2d has no dilation, so its forward only ran with dilation 1; here it
    gets the layer's dilation, which keeps its output on the deformable conv's grid otherwise.

    Protocol attributes (``dcnv3.ops.sampling_hooks``): ``kernel_size``, ``stride``, ``pad``,
    ``dilation`` ints, ``group`` = G, ``points`` = K*K, ``offset_scale`` 1, ``remove_center`` 0.

    Forward: (N, C_in, H, W) -> (N, C_out, H_out, W_out), the convolution output size.
    """

    weight_kind = "sigmoid"  # dcnv3.ops.sampling_hooks.WEIGHT_KINDS
    offset_scale = 1.0
    remove_center = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        act: bool | nn.Module = True,
        deformable_groups: int = 1,
        conv_offset_mask: nn.Module | None = None,
    ):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels {in_channels} and out_channels {out_channels} must be divisible by groups {groups}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.pad = same_padding(kernel_size, dilation) if padding is None else padding
        self.dilation = dilation
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        if conv_offset_mask is None:
            conv_offset_mask = nn.Conv2d(
                in_channels, 3 * self.group * self.points, kernel_size, stride, self.pad, dilation=dilation, bias=True
            )
            nn.init.zeros_(conv_offset_mask.weight)
            nn.init.zeros_(conv_offset_mask.bias)
        self.conv_offset_mask = conv_offset_mask
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The fork's init: weight uniform in +-1/sqrt(C_in*K*K), bias 0 (the offset head is
        zeroed where it is built)."""
        bound = 1.0 / math.sqrt(self.in_channels * self.kernel_size**2)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    @property
    def group(self) -> int:
        """G, the offset (deformable) groups."""
        return self.deformable_groups

    @property
    def points(self) -> int:
        """P = K*K sampling points per group."""
        return self.kernel_size * self.kernel_size

    def sampling_head_parameters(self):
        """The ``conv_offset_mask`` head's parameters (the trainer's offset learning rate)."""
        yield from self.conv_offset_mask.parameters()

    def offset_and_mask(self, input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, C_in, H, W) -> torchvision's ``offset`` (N, 2*G*K*K, H_out, W_out), the sigmoid
        ``mask`` (N, G*K*K, H_out, W_out) and the mask logits before it, as the fork computes them."""
        offset, logits = split_chunked_offset_mask(self.conv_offset_mask(input), self.group * self.points)
        return offset, logits.sigmoid(), logits

    def bounded(self, offset: torch.Tensor, input_hw) -> torch.Tensor:
        """``offset`` with every value clamped to +-L, L = H + W + 2*pad + 2*dilation*K + 2, and
        NaN taken as +L. torchvision's CPU kernel casts sampling locations to integers unchecked,
        so a non-finite or huge offset reads outside the input's memory and crashes the process
        (seen: ultralytics' FLOPs count runs the model on ``torch.empty``, whose garbage can be
        NaN). Any offset of size >= L already samples only zeros (outside the map, with zero
        gradient), so for finite offsets the output and gradients are unchanged."""
        limit = float(sum(input_hw) + 2 * self.pad + 2 * self.dilation * self.kernel_size + 2)
        return torch.nan_to_num(offset, nan=limit, posinf=limit, neginf=-limit).clamp(-limit, limit)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        offset, mask, logits = self.offset_and_mask(input)
        if hooked(self):  # inside dcnv3.ops.capture or override_sampling: hand over in the record layout
            offsets, weights = torchvision_to_record(offset, mask, self.group, self.kernel_size)
            offsets, weights = hand_over(
                self, offsets, weights, tuple(input.shape[-2:]), offset=offset, mask_logits=logits
            )
            offset, mask = record_to_torchvision(offsets, weights, self.kernel_size)
        out = deform_conv2d(
            input,
            self.bounded(offset, input.shape[-2:]),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.pad,
            dilation=self.dilation,
            mask=mask,
        )
        bn = getattr(self, "bn", None)
        return self.act(out if bn is None else bn(out))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}"
        )
