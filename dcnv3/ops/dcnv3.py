"""The DCNv3 module, with InternImage's constructor, parameter names, init and forward.

Input and output are channels-last (N, H, W, C). The state_dict keys are InternImage's, so weights
trained with ``DCNv3_pytorch`` (or its compiled twin ``DCNv3``) load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcnv3.ops import native
from dcnv3.ops.core import dcnv3_core, output_size, square_geometry
from dcnv3.ops.sampling_hooks import HookFreeState, hand_over, hooked

__all__ = [
    "DCNv3",
    "DCNv3_pytorch",
    "DCNv3ConvDW",
    "to_channels_first",
    "to_channels_last",
    "CenterFeatureScaleModule",
    "init_geometry",
    "build_norm_layer",
    "build_act_layer",
]


class to_channels_first(nn.Module):
    """(N, H, W, C) -> (N, C, H, W)."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


class to_channels_last(nn.Module):
    """(N, C, H, W) -> (N, H, W, C)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


def build_norm_layer(
    dim: int, norm_layer: str, in_format: str = "channels_last", out_format: str = "channels_last", eps: float = 1e-6
) -> nn.Sequential:
    """InternImage's norm factory: 'LN' (LayerNorm on channels-last) or 'BN' (on channels-first)."""
    layers = []
    if norm_layer == "BN":
        if in_format == "channels_last":
            layers.append(to_channels_first())
        layers.append(nn.BatchNorm2d(dim))
        if out_format == "channels_last":
            layers.append(to_channels_last())
    elif norm_layer == "LN":
        if in_format == "channels_first":
            layers.append(to_channels_last())
        layers.append(nn.LayerNorm(dim, eps=eps))
        if out_format == "channels_first":
            layers.append(to_channels_first())
    else:
        raise NotImplementedError(f"norm layer {norm_layer!r}: use 'LN' or 'BN'")
    return nn.Sequential(*layers)


def build_act_layer(act_layer: str) -> nn.Module:
    """InternImage's activation factory."""
    layers = {"ReLU": lambda: nn.ReLU(inplace=True), "SiLU": lambda: nn.SiLU(inplace=True), "GELU": nn.GELU}
    if act_layer not in layers:
        raise NotImplementedError(f"activation {act_layer!r}: use one of {sorted(layers)}")
    return layers[act_layer]()


def softmax_over_points(logits: torch.Tensor, points: int) -> torch.Tensor:
    """Softmax over each group's P points: (N, H, W, G*P) logits -> (N, H, W, G*P) weights.

    On the CPU, PyTorch's softmax over a short last dimension (P = 9) walks one row at a time
    and takes 3-6x longer than the same softmax over the first dimension of the transposed
    (P, rows) view, which vectorises across rows; that form is used there under autograd.
    Without autograd (inference, the probe) the kernel library's one-pass softmax runs instead
    (``dcnv3.ops.native.softmax_rows``), saving that form's two transposing copies. Values equal the
    reference's ``F.softmax(..., -1)`` up to last-bit rounding. Other devices and ONNX export take
    the plain form.
    """
    rows = logits.reshape(-1, points)
    if logits.device.type != "cpu" or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return F.softmax(rows, -1).reshape(logits.shape)
    if (
        not (torch.is_grad_enabled() and logits.requires_grad)
        and logits.is_contiguous()
        and logits.dtype in (torch.float32, torch.float64)
        and not torch.compiler.is_compiling()
    ):
        weights = native.softmax_rows(logits, points)  # inference: one pass in the kernel library
        if weights is not None:
            return weights
    return F.softmax(rows.t(), 0).t().reshape(logits.shape)


def init_geometry(
    layer: nn.Module,
    channels: int,
    kernel_size: int,
    stride: int,
    pad: int,
    dilation: int,
    group: int,
    offset_scale: float,
    center_feature_scale: bool,
    remove_center: bool | int,
) -> None:
    """The constructor arguments DCNv3 and DCNv4 share, checked and set on ``layer`` under
    InternImage's attribute names (``group_channels`` = channels // group, ``remove_center`` an
    int). Raises ValueError for channels not divisible by group, or remove_center with an even kernel."""
    if channels % group != 0:
        raise ValueError(f"channels must be divisible by group, but got {channels} and {group}")
    if remove_center and kernel_size % 2 == 0:
        raise ValueError(f"remove_center needs an odd kernel_size, got {kernel_size}")
    layer.offset_scale = offset_scale
    layer.channels = channels
    layer.kernel_size = kernel_size
    layer.stride = stride
    layer.dilation = dilation
    layer.pad = pad
    layer.group = group
    layer.group_channels = channels // group
    layer.center_feature_scale = center_feature_scale
    layer.remove_center = int(remove_center)


class CenterFeatureScaleModule(nn.Module):
    """sigmoid(query @ weight^T + bias): the per-group blend of DCNv3 (between its output and
    ``input_proj``) and of DCNv4 (between its output and the values). The one class of both:
    ``dcnv3.ops.dcnv4.CenterFeatureScaleModule``, the path DCNv4 checkpoints pickle, is this one."""

    def forward(self, query, center_feature_scale_proj_weight, center_feature_scale_proj_bias):
        return F.linear(query, center_feature_scale_proj_weight, center_feature_scale_proj_bias).sigmoid()

    @classmethod
    def attach(cls, layer: nn.Module, group: int, channels: int) -> None:
        """Give ``layer`` InternImage's center_feature_scale parts, in DCNv3's and DCNv4's names and
        order: ``center_feature_scale_proj_weight`` (G, C) and ``_bias`` (G,), both zero, then the
        ``center_feature_scale_module``."""
        layer.center_feature_scale_proj_weight = nn.Parameter(torch.zeros((group, channels)))
        layer.center_feature_scale_proj_bias = nn.Parameter(torch.zeros(group))
        layer.center_feature_scale_module = cls()


class DCNv3(HookFreeState, nn.Module):
    """DCNv3 (InternImage, CVPR 2023) on channels-last tensors.

    Args follow ``DCNv3_pytorch``: ``channels`` C (divisible by ``group`` G, D = C // G channels
    per group), ``kernel_size`` K, ``dw_kernel_size`` (None: K), ``stride``, ``pad``,
    ``dilation``, ``offset_scale``, ``act_layer``/``norm_layer`` of the depthwise branch,
    ``center_feature_scale``, ``remove_center`` (P = K*K - 1 points; needs an odd K).

    Forward: ``input`` (N, H, W, C) -> (N, H_out, W_out, C) with H_out, W_out the usual
    convolution output size of (K, stride, pad, dilation).

    Stride: InternImage predicts offsets at the input resolution, which breaks for stride > 1.
    Here the depthwise conv that feeds the ``offset`` and ``mask`` heads runs with the layer's
    stride, so offsets and weights are predicted on the strided output grid: output cell (h, w)
    reads depthwise features centred on input pixel (h*stride, w*stride), which is the kernel's
    centre whenever ``pad == (dilation*(K-1))//2``. For stride 1 this is the reference exactly.
    With ``center_feature_scale`` and stride > 1 the blended ``input_proj`` features are taken at
    the same pixels (h*stride, w*stride).

    Introspection: the raw offsets (N, H_out, W_out, G*P*2) are the output of ``self.offset`` and
    the softmax weights are ``softmax(self.mask(...))`` per group; the forward hands both (and
    the mask logits) to ``dcnv3.ops.sampling_hooks.hand_over`` while a capture or override is attached.
    Its own layout is already the record layout there.
    """

    weight_kind = "softmax"  # dcnv3.ops.sampling_hooks.WEIGHT_KINDS

    def __init__(
        self,
        channels: int = 64,
        kernel_size: int = 3,
        dw_kernel_size: int | None = None,
        stride: int = 1,
        pad: int = 1,
        dilation: int = 1,
        group: int = 4,
        offset_scale: float = 1.0,
        act_layer: str = "GELU",
        norm_layer: str = "LN",
        center_feature_scale: bool = False,
        remove_center: bool = False,
    ):
        super().__init__()
        init_geometry(
            self, channels, kernel_size, stride, pad, dilation, group, offset_scale, center_feature_scale, remove_center
        )
        dw_kernel_size = dw_kernel_size if dw_kernel_size is not None else kernel_size
        self.dw_kernel_size = dw_kernel_size
        points = kernel_size * kernel_size - self.remove_center

        self.dw_conv = nn.Sequential(
            nn.Conv2d(
                channels,
                channels,
                kernel_size=dw_kernel_size,
                stride=stride,
                padding=(dw_kernel_size - 1) // 2,
                groups=channels,
            ),
            build_norm_layer(channels, norm_layer, "channels_first", "channels_last"),
            build_act_layer(act_layer),
        )
        self.offset = nn.Linear(channels, group * points * 2)
        self.mask = nn.Linear(channels, group * points)
        self.input_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels)
        self._reset_parameters()
        if center_feature_scale:
            CenterFeatureScaleModule.attach(self, group, channels)

    def _reset_parameters(self) -> None:
        # Zero offset and mask heads: an untrained layer samples the regular grid, weights 1/P.
        for head in (self.offset, self.mask):
            nn.init.constant_(head.weight, 0.0)
            nn.init.constant_(head.bias, 0.0)
        for proj in (self.input_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    @property
    def points(self) -> int:
        """P, sampling points per group."""
        return self.kernel_size * self.kernel_size - int(getattr(self, "remove_center", 0))

    def sampling_head_parameters(self):
        """The ``offset`` and ``mask`` Linear parameters (the trainer's offset learning rate)."""
        yield from self.offset.parameters()
        yield from self.mask.parameters()

    def offset_features(self, input: torch.Tensor) -> torch.Tensor:
        """The depthwise branch that feeds the ``offset`` and ``mask`` heads: (N, H, W, C) ->
        (N, H_out, W_out, C). InternImage's ``dw_conv`` takes NCHW and returns channels-last."""
        return self.dw_conv(input.permute(0, 3, 1, 2))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or input.shape[-1] != self.channels:
            raise ValueError(
                f"DCNv3({self.channels} channels) expects a channels-last tensor (N, H, W, "
                f"{self.channels}); got shape {tuple(input.shape)}"
                + (
                    " - this looks like NCHW, permute it with x.permute(0, 2, 3, 1)"
                    if input.dim() == 4 and input.shape[1] == self.channels
                    else ""
                )
            )
        _n, in_h, in_w, _ = input.shape
        remove_center = int(getattr(self, "remove_center", 0))  # absent in ops v1.0 pickles
        x = self.input_proj(input)
        x_proj = x
        x1 = self.offset_features(input)  # NHWC, on the strided output grid
        geometry = square_geometry(self.kernel_size, self.stride, self.pad, self.dilation)
        out_h, out_w = output_size(in_h, in_w, *geometry)
        if x1.shape[1:3] != (out_h, out_w):
            raise ValueError(
                f"DCNv3 geometry mismatch: the offset branch (dw_kernel_size={self.dw_kernel_size}, "
                f"stride={self.stride}) gives a {tuple(x1.shape[1:3])} grid but kernel "
                f"{self.kernel_size}, pad {self.pad}, dilation {self.dilation} give {(out_h, out_w)}"
            )
        offset = self.offset(x1)
        logits = self.mask(x1)
        mask = softmax_over_points(logits, self.points)
        if hooked(self):  # inside dcnv3.ops.capture or override_sampling; the record layout is a view
            grid = offset.shape[:3]
            offsets, weights = hand_over(
                self,
                offset.reshape(*grid, self.group, self.points, 2),
                mask.reshape(*grid, self.group, self.points),
                (in_h, in_w),
                offset=offset,
                mask_logits=logits,
            )
            offset, mask = offsets.reshape(offset.shape), weights.reshape(mask.shape)
        x = dcnv3_core(x, offset, mask, *geometry, self.group, self.group_channels, self.offset_scale, remove_center)
        if self.center_feature_scale:
            scale = self.center_feature_scale_module(
                x1, self.center_feature_scale_proj_weight, self.center_feature_scale_proj_bias
            )
            scale = scale[..., None].repeat(1, 1, 1, 1, self.channels // self.group).flatten(-2)
            if self.stride > 1:
                x_proj = x_proj[:, :: self.stride, :: self.stride][:, :out_h, :out_w]
            x = x * (1 - scale) + x_proj * scale
        return self.output_proj(x)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"pad={self.pad}, dilation={self.dilation}, group={self.group}, "
            f"offset_scale={self.offset_scale}, remove_center={self.points != self.kernel_size**2}"
        )


# InternImage names the pure-PyTorch module DCNv3_pytorch; forks pickle either name.
DCNv3_pytorch = DCNv3


class DCNv3ConvDW(DCNv3):
    """DCNv3 whose depthwise branch is a channels-first conv block, as the ``extra_modules``
    family of YOLO forks builds it (``ultralytics.nn.extra_modules.ops_dcnv3.modules.dcnv3.DCNv3``):
    ``dw_conv`` is an ultralytics ``Conv`` (depthwise Conv2d without bias, autopad, stride 1 ->
    BatchNorm2d -> SiLU), (N, C, H, W) -> (N, C, H, W), instead of InternImage's Conv2d ->
    LayerNorm -> GELU that returns channels-last. Everything else, parameters and forward, is
    DCNv3's; state_dict keys are the fork's (``dw_conv.conv.weight``, ``dw_conv.bn.*``).

    ``dw_conv``: that block, built by the caller (this module does not depend on ultralytics);
    the other arguments are DCNv3's. Forward: (N, H, W, C) -> (N, H_out, W_out, C).
    """

    def __init__(self, channels: int = 64, kernel_size: int = 3, *, dw_conv: nn.Module, **kwargs):
        super().__init__(channels, kernel_size, **kwargs)
        self.dw_conv = dw_conv

    def offset_features(self, input: torch.Tensor) -> torch.Tensor:
        return self.dw_conv(input.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
