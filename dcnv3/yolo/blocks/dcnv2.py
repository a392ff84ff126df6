"""YOLO blocks with DCNv2: the extra_modules family's DCNv2 conv block, its ``_Dynamic`` variant and
their Bottleneck / C2f / C3k / C3k2 wrappers, with the family's class and attribute names.

The family (``ultralytics/nn/extra_modules/block.py`` of the YOLOv8 and YOLO11 improvement forks,
e.g. xiaosanmeng/Lightweight-Vehicle-Detection-... and Ascom-stack/yolo11) defines:

* ``DCNv2``: a whole conv block (deformable conv -> BN -> act) on ``torchvision``'s
  ``deform_conv2d``; here ``dcnv3.ops.dcnv2.DCNv2`` computes it, and ``DCNv2`` below is that module
  parsed as a ``Conv`` in a YAML;
* ``DCNv2_Dynamic``: the same block whose offsets and masks come from ``DCNv2_Offset_Attention``
  (the Conv2d ``conv_offset_mask`` followed by ``attention``, an ``MPCA`` multipath coordinate
  attention that gates the prediction by its row, column and global averages);
* ``Bottleneck_DCNV2`` / ``Bottleneck_DCNV2_Dynamic`` (stock Bottleneck whose ``cv2`` is the block),
  ``C2f_DCNv2`` / ``C2f_DCNv2_Dynamic`` (YOLOv8), ``C3k_DCNv2`` / ``C3k2_DCNv2`` and their
  ``_Dynamic`` twins (YOLO11); its ``C3_DCNv2`` (a C3 of Bottleneck_DCNV2 with k = (1, 3)) has
  C3k_DCNv2's structure and forward.

A checkpoint of theirs, recognised by ``dcnv3.yolo.fork_layouts``, has exactly the structure these
classes build, so it runs on them.

Groups: the family's bottlenecks build ``DCNv2(c_, c2, k[1], 1)``, one offset group whatever ``g``
the YAML gives. Here ``g`` reaches the DCNv2 as its ``deformable_groups`` (the shipped YAMLs pass
1, the family's choice; 0 picks ``auto_group``, 16 channels per group).

parse_model scales these blocks as their stock twins (``dcnv3.yolo.blocks.dcnv3.ParsedAsStockTwin``).
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import Bottleneck, C2f, C3k, C3k2
from ultralytics.nn.modules.conv import Conv

from dcnv3.ops import dcnv2
from dcnv3.yolo.blocks.dcnv3 import (
    ParsedAsStockTwin,
    auto_group,
    batchnorm_affine,
    build_c2f_layout,
    build_c3k_layout,
)

__all__ = [
    "DCNv2",
    "DCNv2_Dynamic",
    "MPCA",
    "DCNv2OffsetAttention",
    "Bottleneck_DCNV2",
    "Bottleneck_DCNV2_Dynamic",
    "C2f_DCNv2",
    "C2f_DCNv2_Dynamic",
    "C3k_DCNv2",
    "C3k_DCNv2_Dynamic",
    "C3k2_DCNv2",
    "C3k2_DCNv2_Dynamic",
    "BLOCK_ALIASES",
]


class DCNv2(dcnv2.DCNv2, metaclass=ParsedAsStockTwin):
    """``dcnv3.ops.dcnv2.DCNv2`` as a YAML layer: args as Conv's (c1, c2, k, s, p, g, d, act) plus
    ``deformable_groups``; parse_model scales its width as a Conv's. Same state and forward."""

    _parsed_as = Conv

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold the BatchNorm into the deformable convolution (inference only): the output is
        linear in ``weight`` (C_out, C_in/g, K, K) and ``bias`` (C_out,) per output channel, so
        the BN's scale * y + shift becomes (scale * weight, scale * bias + shift). Removes ``bn``;
        ``DCNv2.forward`` then skips it (ultralytics' fuse() calls this)."""
        bn = getattr(self, "bn", None)
        if bn is None:
            return
        scale, shift = batchnorm_affine(bn)
        self.weight.copy_(self.weight * scale[:, None, None, None])
        self.bias.copy_(self.bias * scale + shift)
        del self.bn


class MPCA(nn.Module):
    """Multipath coordinate attention, as the family's ``attention.MPCA``: the input times three
    sigmoid gates, one per row, one per column and one per channel.

    Row and column averages (``pool_h``: (N, C, H, 1), ``pool_w``: (N, C, 1, W) laid along H) are
    stacked into one (N, C, H + W, 1) strip and mixed by ``conv_hw`` (a (3, 1) Conv); a 1x1 Conv
    ``conv_pool_hw`` with a sigmoid weighs the strip. The row gate is sigmoid(strip_h * weight_h),
    the column gate likewise, and the channel gate sigmoid(``gap``(x) * mean of the strip's
    weights), ``gap`` being a global average then a 1x1 Conv.

    Forward: (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), Conv(channels, channels))
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.conv_hw = Conv(channels, channels, (3, 1))
        self.conv_pool_hw = Conv(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        strip = self.conv_hw(torch.cat([self.pool_h(x), self.pool_w(x).transpose(2, 3)], dim=2))  # (N, C, H+W, 1)
        strip_weight = self.conv_pool_hw(strip).sigmoid()
        rows, cols = strip.split([h, w], dim=2)
        row_weight, col_weight = strip_weight.split([h, w], dim=2)
        channel = self.gap(x) * strip_weight.mean(dim=2, keepdim=True)  # (N, C, 1, 1)
        return x * (rows * row_weight).sigmoid() * (cols * col_weight).transpose(2, 3).sigmoid() * channel.sigmoid()


class DCNv2OffsetAttention(nn.Module):
    """The ``_Dynamic`` variant's offset head (the family's ``DCNv2_Offset_Attention``):
    ``conv_offset_mask`` Conv2d(C_in, 3*G*K*K, K, stride, pad) then ``attention`` = MPCA over its
    3*G*K*K channels. Forward: (N, C_in, H, W) -> (N, 3*G*K*K, H_out, W_out), in the layout that
    ``dcnv3.ops.dcnv2.split_chunked_offset_mask`` reads.

    The family builds the Conv2d with autopad(K) and no dilation; ``padding`` and ``dilation``
    (the layer's) keep it on the deformable conv's grid, and equal those for the family's layers.
    """

    def __init__(
        self,
        in_channels: int,
        kernel_size: int,
        stride: int,
        deformable_groups: int = 1,
        padding: int | None = None,
        dilation: int = 1,
    ):
        super().__init__()
        self.out_channel = deformable_groups * 3 * kernel_size * kernel_size
        padding = dcnv2.same_padding(kernel_size, dilation) if padding is None else padding
        self.conv_offset_mask = nn.Conv2d(
            in_channels, self.out_channel, kernel_size, stride, padding, dilation=dilation, bias=True
        )
        self.attention = MPCA(self.out_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.conv_offset_mask(x))


class DCNv2_Dynamic(DCNv2):
    """DCNv2 whose offsets and masks come from ``DCNv2OffsetAttention`` (its Conv2d zero-initialised,
    as the family's). Args as ``DCNv2``; state keys ``conv_offset_mask.conv_offset_mask.*`` and
    ``conv_offset_mask.attention.*`` as the family's."""

    _parsed_as = Conv

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
    ):
        head = DCNv2OffsetAttention(in_channels, kernel_size, stride, deformable_groups, padding, dilation)
        nn.init.zeros_(head.conv_offset_mask.weight)
        nn.init.zeros_(head.conv_offset_mask.bias)
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            groups,
            dilation,
            act,
            deformable_groups,
            conv_offset_mask=head,
        )


def _offset_groups(g: int, channels: int) -> int:
    return g if g > 0 else auto_group(channels)


class Bottleneck_DCNV2(nn.Module, metaclass=ParsedAsStockTwin):
    """Bottleneck whose second conv is a DCNv2 block: Conv(k[0]) c1 -> c_ = c2*e, DCNv2(c_, c2,
    k[1]) with ``g`` offset groups, plus the shortcut when ``shortcut`` and c1 == c2.
    Shapes: (N, c1, H, W) -> (N, c2, H, W)."""

    _parsed_as = Bottleneck
    deformable = DCNv2

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple = (3, 3), e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = self.deformable(hidden, c2, k[1], 1, deformable_groups=_offset_groups(g, hidden))
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class Bottleneck_DCNV2_Dynamic(Bottleneck_DCNV2):
    """Bottleneck_DCNV2 with a DCNv2_Dynamic block."""

    _parsed_as = Bottleneck
    deformable = DCNv2_Dynamic


class C2f_DCNv2(C2f, metaclass=ParsedAsStockTwin):
    """C2f whose n bottlenecks are Bottleneck_DCNV2(c, c, e=1.0): DCNv2 on c = c2*e channels.
    Args as C2f: (c1, c2, n, shortcut, g, e), ``g`` the offset groups; forward and forward_split
    are C2f's. Shapes: (N, c1, H, W) -> (N, c2, H, W)."""

    _parsed_as = C2f
    bottleneck = Bottleneck_DCNV2

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        build_c2f_layout(self, c1, c2, n, e, lambda c: self.bottleneck(c, c, shortcut, g, k=(3, 3), e=1.0))


class C2f_DCNv2_Dynamic(C2f_DCNv2):
    """C2f_DCNv2 with Bottleneck_DCNV2_Dynamic bottlenecks."""

    _parsed_as = C2f
    bottleneck = Bottleneck_DCNV2_Dynamic


class C3k_DCNv2(C3k, metaclass=ParsedAsStockTwin):
    """C3k whose n bottlenecks are Bottleneck_DCNV2(c_, c_, k=(k, k), e=1.0) on c_ = c2*e
    channels; forward is C3's. Args (c1, c2, n, shortcut, g, e, k) as the family's (shortcut
    defaults to False there). Attributes as C3: cv1, cv2 (1x1 Conv c1 -> c_), cv3 (1x1 Conv
    2*c_ -> c2), m. Shapes: (N, c1, H, W) -> (N, c2, H, W)."""

    _parsed_as = C3k
    bottleneck = Bottleneck_DCNV2

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5, k: int = 3):
        build_c3k_layout(self, c1, c2, n, e, lambda c: self.bottleneck(c, c, shortcut, g, k=(k, k), e=1.0))


class C3k_DCNv2_Dynamic(C3k_DCNv2):
    """C3k_DCNv2 with Bottleneck_DCNV2_Dynamic bottlenecks."""

    _parsed_as = C3k
    bottleneck = Bottleneck_DCNV2_Dynamic


class C3k2_DCNv2(C3k2, metaclass=ParsedAsStockTwin):
    """C3k2 whose inner blocks hold DCNv2: C3k_DCNv2 (c3k=True) or Bottleneck_DCNV2.

    Args: (c1, c2, n, c3k, e, g, shortcut) as the family's C3k2_DCNv2, ``g`` the offset groups.
    With c = c2*e: c3k=False: n x Bottleneck_DCNV2(c, c, e=0.5) (Conv 3x3 c -> c/2, DCNv2 c/2 ->
    c); c3k=True: n x C3k_DCNv2(c, c, 2 bottlenecks), DCNv2 on c/2 channels. ultralytics picks
    c3k=True at scales m, l, x (``dcnv3.yolo.blocks.dcnv3.with_stock_scale_rules``). forward /
    forward_split are C2f's. Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C3k2
    inner = (C3k_DCNv2, Bottleneck_DCNV2)

    def __init__(
        self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1, shortcut: bool = True
    ):
        c3k_block, bottleneck = self.inner

        def inner(c):
            return c3k_block(c, c, 2, shortcut, g) if c3k else bottleneck(c, c, shortcut, g)

        build_c2f_layout(self, c1, c2, n, e, inner)


class C3k2_DCNv2_Dynamic(C3k2_DCNv2):
    """C3k2_DCNv2 with the ``_Dynamic`` inner blocks."""

    _parsed_as = C3k2
    inner = (C3k_DCNv2_Dynamic, Bottleneck_DCNV2_Dynamic)


# The names the forks use for the same classes, in YAML files and in pickles.
BLOCK_ALIASES = {
    "DCNv2": DCNv2,
    "DCNV2": DCNv2,
    "DCNv2_Dynamic": DCNv2_Dynamic,
    "DCNV2_Dynamic": DCNv2_Dynamic,
    "Bottleneck_DCNV2": Bottleneck_DCNV2,
    "Bottleneck_DCNv2": Bottleneck_DCNV2,
    "Bottleneck_DCNV2_Dynamic": Bottleneck_DCNV2_Dynamic,
    "Bottleneck_DCNv2_Dynamic": Bottleneck_DCNV2_Dynamic,
    "C2f_DCNv2": C2f_DCNv2,
    "C2f_DCNV2": C2f_DCNv2,
    "C2f_DCNv2_Dynamic": C2f_DCNv2_Dynamic,
    "C2f_DCNV2_Dynamic": C2f_DCNv2_Dynamic,
    "C3k_DCNv2": C3k_DCNv2,
    "C3k_DCNV2": C3k_DCNv2,
    "C3k_DCNv2_Dynamic": C3k_DCNv2_Dynamic,
    "C3k2_DCNv2": C3k2_DCNv2,
    "C3k2_DCNV2": C3k2_DCNv2,
    "C3k2_DCNv2_Dynamic": C3k2_DCNv2_Dynamic,
}
