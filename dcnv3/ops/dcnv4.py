"""DCNv4 (Xiong et al., CVPR 2024, OpenGVLab/DCNv4) on any device: the functional op and the module.

DCNv4 computes DCNv3's core without the softmax. One ``offset_mask`` projection gives, for every
output cell, per group g the block ``[2P offsets as (dx, dy) pairs | P modulation scalars]``
(channels ``[g*3P, (g+1)*3P)``), and the row is zero-padded up to a multiple of 8 channels
(``offset_mask_channels``). The scalars are used as they are: signed, unbounded, not normalised.
Split per group, they are exactly DCNv3's ``offset`` and ``mask`` (``split_per_group_offset_mask``), so
``dcnv4_core`` runs DCNv3's core formulations (``dcnv3.ops.dcnv3_core``: the compiled CPU kernel by
default, ``with dcnv3.formulation(name):`` to choose), forward and backward, on any device.
DCNv4's own extension is CUDA-only ("Not implemented on the CPU"); nothing of it is needed here.

Sampling location of point p = i*K_h + j (i walks x, j walks y; with ``remove_center`` the
centre point is skipped), group g, output cell (h, w), in unpadded input pixels, with
``c = (dilation*(K-1))//2``, as DCNv4's kernel forms it::

    x = w*stride_w - pad_w + c_w + offset_scale * (i*dilation_w - c_w + dx)
    y = h*stride_h - pad_h + c_h + offset_scale * (j*dilation_h - c_h + dy)
    out[n, h, w, g*D + k] = sum_p m[g, p] * bilinear(input[..., g*D + k], y, x)   (zeros outside)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcnv3.ops.core import dcnv3_core, output_size, square_geometry

# CenterFeatureScaleModule: also importable from here, the path DCNv4 checkpoints pickle.
from dcnv3.ops.dcnv3 import CenterFeatureScaleModule, init_geometry
from dcnv3.ops.sampling_hooks import HookFreeState, hand_over, hooked

__all__ = ["DCNv4", "dcnv4_core", "split_per_group_offset_mask", "offset_mask_channels"]


def offset_mask_channels(group: int, kernel_size: int, remove_center: bool | int = False) -> int:
    """Width of DCNv4's ``offset_mask`` Linear: G * 3P rounded up to a multiple of 8."""
    points = kernel_size * kernel_size - int(remove_center)
    return int(math.ceil(group * points * 3 / 8) * 8)


def split_per_group_offset_mask(
    offset_mask: torch.Tensor, group: int, points: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DCNv4's packed ``offset_mask`` as DCNv3's ``offset`` and ``mask`` tensors: channels-last, one
    block of offsets and scalars per group, padded (DCNv2's channels-first chunks of all groups'
    offsets, then all masks: ``dcnv3.ops.dcnv2.split_chunked_offset_mask``).

    Args:
        offset_mask: (..., C_om) with C_om >= group*3*points; per group g, channels
            ``[g*3P, g*3P + 2P)`` are the (dx, dy) pairs of the P points and
            ``[g*3P + 2P, (g+1)*3P)`` their modulation scalars; channels from G*3P on (DCNv4's
            padding to a multiple of 8) are ignored.
        group, points: G and P.

    Returns:
        ``(offset, mask)``: (..., G*P*2) with channel ``g*2P + 2p`` dx and ``+1`` dy, and
        (..., G*P) with channel ``g*P + p``; new contiguous tensors (autograd flows back into
        ``offset_mask``, zero into the padding).
    """
    used = group * points * 3
    if offset_mask.shape[-1] < used:
        raise ValueError(
            f"DCNv4 offset_mask has {offset_mask.shape[-1]} channels in its last dimension; "
            f"group*3*P = {group}*3*{points} = {used} are needed"
        )
    blocks = offset_mask[..., :used].unflatten(-1, (group, 3 * points))
    offset = blocks[..., : 2 * points].flatten(-2)
    mask = blocks[..., 2 * points :].flatten(-2)
    return offset.contiguous(), mask.contiguous()


split_offset_mask = split_per_group_offset_mask  # the earlier name


def dcnv4_core(
    input: torch.Tensor,
    offset_mask: torch.Tensor,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
    group: int,
    group_channels: int,
    offset_scale: float,
    remove_center: bool | int,
    softmax: bool = False,
) -> torch.Tensor:
    """DCNv4 core: ``DCNv4Function``'s arguments (less its CUDA tuning ones), with autograd.

    Args:
        input: (N, H_in, W_in, group*group_channels), channels-last (the value projection).
        offset_mask: (N, H_out, W_out, C_om), C_om >= group*3P (DCNv4 pads it to a multiple of 8,
            ``offset_mask_channels``); per group g: channels ``[g*3P, g*3P + 2P)`` the offsets as
            (dx, dy) pairs in input pixels before ``offset_scale``, point p at ``g*3P + 2p``;
            ``[g*3P + 2P, (g+1)*3P)`` the P modulation scalars (signed, not normalised); the
            channels from group*3P on are ignored (they get zero gradient). P = K_h*K_w -
            remove_center. H_out, W_out must be the convolution output size of the geometry.
        kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w: the
            convolution geometry, as in DCNv3.
        group, group_channels: G and D.
        offset_scale: scales the kernel grid and the learned offsets together.
        remove_center: drop the kernel's centre point (needs an odd kernel).
        softmax: normalise each group's scalars with a softmax over its P points first (DCNv4's
            kernel flag; its DCNv4 module never sets it, and then this is DCNv3's core).

    Returns:
        (N, H_out, W_out, group*group_channels) in ``input``'s dtype; sampling runs in float64
        for float64 inputs and in float32 otherwise, through the formulation ``dcnv3_core`` uses
        (``dcnv3.set_default_formulation`` / ``with dcnv3.formulation(name):``).
    """
    points = kernel_h * kernel_w - int(remove_center)
    if input.dim() != 4 or offset_mask.dim() != 4:
        raise ValueError(
            f"DCNv4 expects a channels-last input (N, H, W, C) and offset_mask (N, H_out, "
            f"W_out, C_om); got {tuple(input.shape)} and {tuple(offset_mask.shape)}"
        )
    want = (input.shape[0],) + output_size(
        input.shape[1], input.shape[2], kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w
    )
    if tuple(offset_mask.shape[:3]) != want:
        raise ValueError(
            f"DCNv4 offset_mask has shape {tuple(offset_mask.shape)}, expected {want + ('C_om',)}: "
            f"(N, H_out, W_out, C_om) for kernel {kernel_h}x{kernel_w}, stride ({stride_h}, {stride_w}), "
            f"pad ({pad_h}, {pad_w}), dilation ({dilation_h}, {dilation_w}) on a "
            f"{input.shape[1]}x{input.shape[2]} input"
        )
    offset, mask = split_per_group_offset_mask(offset_mask, group, points)
    if softmax:
        mask = F.softmax(mask.unflatten(-1, (group, points)), -1).flatten(-2)
    return dcnv3_core(
        input,
        offset,
        mask,
        kernel_h,
        kernel_w,
        stride_h,
        stride_w,
        pad_h,
        pad_w,
        dilation_h,
        dilation_w,
        group,
        group_channels,
        offset_scale,
        remove_center,
    )


class DCNv4(HookFreeState, nn.Module):
    """DCNv4 with OpenGVLab/DCNv4's constructor, parameter names, init and forward, on any device.

    Args follow ``DCNv4.modules.dcnv4.DCNv4``: ``channels`` C (divisible by ``group`` G; D = C // G;
    DCNv4 asserts D % 16 == 0 for its CUDA kernel, which this op does not need), ``kernel_size``
    K, ``stride``, ``pad``, ``dilation``, ``group``, ``offset_scale``, ``dw_kernel_size`` (None:
    the offset_mask Linear reads the input itself; else a depthwise Conv2d ``offset_mask_dw``
    of that size comes first), ``center_feature_scale``, ``remove_center`` (P = K*K - 1; odd K),
    ``output_bias`` (``output_proj``'s bias), ``without_pointwise`` (no ``value_proj`` /
    ``output_proj``: the core runs on the input itself). Other keyword arguments are accepted
    and ignored, as DCNv4 does.

    Parameters (state_dict keys as DCNv4's, so its checkpoints load with ``strict=True``):
    ``offset_mask`` Linear(C, ``offset_mask_channels(G, K, remove_center)``) (zero init),
    ``value_proj`` / ``output_proj`` Linear(C, C) (xavier, zero bias), optional
    ``offset_mask_dw.{weight,bias}``, ``center_feature_scale_proj_weight`` (G, C) and ``_bias`` (G,).

    Forward ``(input, shape=None)``, in either of the two layouts DCNv4 modules take:

    * (N, L, C) tokens, as DCNv4's own module: ``shape`` = (H, W) with H*W = L (default: a square
      of side sqrt(L)); returns (N, H_out*W_out, C);
    * (N, C, H, W), as the DCNv4 copy of the YOLO ``extra_modules`` family takes it (its
      ``DCNV4_YOLO`` passes ``shape=(H, W)``, which must then match); returns (N, C, H_out, W_out).

    Stride and padding: DCNv4 predicts ``offset_mask`` at every input pixel, which its kernel
    reads as if it were the output grid; that is right only for stride 1 with pad = (dilation*
    (K-1))//2, and there this module computes exactly DCNv4's forward. Otherwise the prediction
    is read at each output cell's kernel centre (input pixel (h*stride - pad + c, w*stride - pad
    + c)), as ``dcnv3.DCNv3`` predicts its offsets on the strided grid; the center_feature_scale
    blend takes the value projection at the same pixels.
    """

    weight_kind = "free"  # dcnv3.ops.sampling_hooks.WEIGHT_KINDS: signed scalars, no softmax

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        dw_kernel_size: int | None = None,
        center_feature_scale: bool = False,
        remove_center: bool = False,
        output_bias: bool = True,
        without_pointwise: bool = False,
        **kwargs,
    ):
        super().__init__()
        init_geometry(
            self, channels, kernel_size, stride, pad, dilation, group, offset_scale, center_feature_scale, remove_center
        )
        self.dw_kernel_size = dw_kernel_size
        self.without_pointwise = without_pointwise
        self.K = group * (kernel_size * kernel_size - self.remove_center)  # DCNv4's name: G*P
        if dw_kernel_size is not None:
            self.offset_mask_dw = nn.Conv2d(
                channels, channels, dw_kernel_size, stride=1, padding=(dw_kernel_size - 1) // 2, groups=channels
            )
        self.offset_mask = nn.Linear(channels, offset_mask_channels(group, kernel_size, remove_center))
        if not without_pointwise:
            self.value_proj = nn.Linear(channels, channels)
            self.output_proj = nn.Linear(channels, channels, bias=output_bias)
        self._reset_parameters()
        if center_feature_scale:
            CenterFeatureScaleModule.attach(self, group, channels)

    def _reset_parameters(self) -> None:
        # Zero offset_mask: an untrained layer samples the regular grid with all scalars 0, so its
        # output is 0 until the scalars learn (DCNv4's init; there is no softmax to make it 1/P).
        nn.init.constant_(self.offset_mask.weight, 0.0)
        nn.init.constant_(self.offset_mask.bias, 0.0)
        if not self.without_pointwise:
            nn.init.xavier_uniform_(self.value_proj.weight)
            nn.init.constant_(self.value_proj.bias, 0.0)
            nn.init.xavier_uniform_(self.output_proj.weight)
            if self.output_proj.bias is not None:
                nn.init.constant_(self.output_proj.bias, 0.0)

    @property
    def points(self) -> int:
        """P, sampling points per group."""
        return self.kernel_size * self.kernel_size - self.remove_center

    def output_hw(self, in_h: int, in_w: int) -> tuple[int, int]:
        """(H_out, W_out) for an (in_h, in_w) input."""
        return output_size(in_h, in_w, *self.square_geometry())

    def square_geometry(self) -> tuple[int, ...]:
        """The core's eight geometry arguments (``dcnv3.ops.square_geometry``)."""
        return square_geometry(self.kernel_size, self.stride, self.pad, self.dilation)

    def _at_kernel_centres(self, features: torch.Tensor) -> torch.Tensor:
        """(N, H, W, C) input-grid features -> (N, H_out, W_out, C) at each output cell's kernel
        centre; the identity for stride 1 with pad = (dilation*(K-1))//2 (DCNv4's own case)."""
        _, in_h, in_w, _ = features.shape
        out_h, out_w = self.output_hw(in_h, in_w)
        start = (self.dilation * (self.kernel_size - 1)) // 2 - self.pad
        if start == 0 and self.stride == 1:
            return features
        stop_h, stop_w = start + (out_h - 1) * self.stride, start + (out_w - 1) * self.stride
        if start < 0 or stop_h >= in_h or stop_w >= in_w:
            raise ValueError(
                f"DCNv4 with kernel {self.kernel_size}, pad {self.pad}, dilation {self.dilation}: "
                "the kernel centres leave the input, where no offset_mask is predicted"
            )
        return features[:, start : stop_h + 1 : self.stride, start : stop_w + 1 : self.stride]

    def sampling_head_parameters(self):
        """The ``offset_mask`` Linear's parameters and the optional ``offset_mask_dw`` before it
        (the trainer's offset learning rate)."""
        yield from self.offset_mask.parameters()
        if self.dw_kernel_size is not None:
            yield from self.offset_mask_dw.parameters()

    def predict_offset_mask(self, input: torch.Tensor) -> torch.Tensor:
        """The packed offset_mask the core samples with: (N, H, W, C) channels-last input ->
        (N, H_out, W_out, C_om), before any split (layout in ``dcnv4_core``)."""
        features = input
        if self.dw_kernel_size is not None:
            features = self.offset_mask_dw(input.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.offset_mask(self._at_kernel_centres(features))

    def _channels_last(self, input: torch.Tensor, shape) -> tuple[torch.Tensor, bool]:
        """The input as (N, H, W, C) and whether it came as (N, C, H, W)."""
        c = self.channels
        if input.dim() == 3 and input.shape[-1] == c:
            n, tokens, _ = input.shape
            h, w = shape if shape is not None else (int(tokens**0.5),) * 2
            if h * w != tokens:
                raise ValueError(
                    f"DCNv4 got {tokens} tokens but shape {tuple(shape) if shape else (h, w)}: "
                    "pass shape=(H, W) with H*W = L for an (N, L, C) input"
                )
            return input.reshape(n, h, w, c), False
        if input.dim() == 4 and input.shape[1] == c:
            if shape is not None and tuple(shape) != tuple(input.shape[2:]):
                raise ValueError(
                    f"DCNv4 got an (N, C, H, W) input of size {tuple(input.shape[2:])} but shape={tuple(shape)}"
                )
            return input.permute(0, 2, 3, 1), True
        raise ValueError(
            f"DCNv4({c} channels) takes (N, L, {c}) tokens with shape=(H, W), or (N, {c}, H, W); "
            f"got {tuple(input.shape)}"
        )

    def _sample_hooked(self, x: torch.Tensor, offset_mask: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
        """``dcnv4_core`` with its split made here, so that the (dx, dy) offsets and free scalars
        pass through ``hand_over`` (capture, override) in the record layout on the way."""
        offset, mask = split_per_group_offset_mask(offset_mask, self.group, self.points)
        grid = offset.shape[:3]
        offsets, weights = hand_over(
            self,
            offset.reshape(*grid, self.group, self.points, 2),
            mask.reshape(*grid, self.group, self.points),
            input_hw,
            offset_mask=offset_mask,
        )
        return dcnv3_core(
            x,
            offsets.reshape(offset.shape),
            weights.reshape(mask.shape),
            *self.square_geometry(),
            self.group,
            self.group_channels,
            self.offset_scale,
            self.remove_center,
        )

    def forward(self, input: torch.Tensor, shape: tuple[int, int] | None = None) -> torch.Tensor:
        x_in, channels_first = self._channels_last(input, shape)
        n = x_in.shape[0]
        x = x_in if self.without_pointwise else self.value_proj(x_in)
        offset_mask = self.predict_offset_mask(x_in)
        if hooked(self):  # inside dcnv3.ops.capture or override_sampling
            out = self._sample_hooked(x, offset_mask, tuple(x_in.shape[1:3]))
        else:
            out = dcnv4_core(
                x,
                offset_mask,
                *self.square_geometry(),
                self.group,
                self.group_channels,
                self.offset_scale,
                self.remove_center,
            )
        if self.center_feature_scale:
            # DCNv4 computes the blend from the core's output (DCNv3 from the offset features).
            scale = self.center_feature_scale_module(
                out, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            )
            scale = scale.repeat_interleave(self.group_channels, dim=-1)
            out = out * (1 - scale) + self._at_kernel_centres(x) * scale
        if not self.without_pointwise:
            out = self.output_proj(out)
        if channels_first:
            return out.permute(0, 3, 1, 2)
        return out.reshape(n, -1, self.channels)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
            f"offset_scale={self.offset_scale}, remove_center={bool(self.remove_center)}, "
            f"without_pointwise={self.without_pointwise}"
        )
