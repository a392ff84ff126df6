"""YOLO blocks with DCNv4: the extra_modules family's DCNV4_YOLO and its Bottleneck / C2f / C3k /
C3k2 wrappers, with the family's class and attribute names.

The family (``ultralytics/nn/extra_modules/block.py`` of the YOLO11 improvement forks, e.g.
Ascom-stack/yolo11) defines ``DCNV4_YOLO`` (an optional 1x1 Conv stem ``stem_conv`` where the
channels change, OpenGVLab's ``DCNv4`` called on the NCHW map with ``shape=(H, W)``, ``bn``,
``act``), ``Bottleneck_DCNV4`` (stock Bottleneck whose ``cv2`` is a DCNV4_YOLO), ``C3k_DCNv4``
and ``C3k2_DCNv4``; its YOLOv8 copies add ``C2f_DCNv4``. A checkpoint of theirs, recognised by
``dcnv3.yolo.fork_layouts``, has exactly the structure these classes build, so it runs on them.

Groups: the family's Bottleneck_DCNV4 builds ``DCNV4_YOLO(c_, c2, k[1])``, so every DCNv4 there
has group 1 whatever ``g`` the YAML gives (DCNv4's CUDA kernel wants channels // group to be a
multiple of 16, which group 1 meets at every YOLO width). Here ``g`` reaches the DCNv4 as its
group count (the shipped YAMLs pass 1, the family's choice); 0 picks ``auto_group`` (16
channels per group, as DCNv3's blocks). ``dcnv3.ops.dcnv4.DCNv4`` runs on any device and needs no
channel multiple.

parse_model scales these blocks as their stock twins (``dcnv3.yolo.blocks.dcnv3.ParsedAsStockTwin``).
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import Bottleneck, C2f, C3k, C3k2
from ultralytics.nn.modules.conv import Conv, autopad

from dcnv3.ops.dcnv4 import DCNv4
from dcnv3.yolo.blocks.dcnv3 import (
    ParsedAsStockTwin,
    auto_group,
    build_c2f_layout,
    build_c3k_layout,
    fold_batchnorm_into_linear,
)

__all__ = ["DCNV4_YOLO", "Bottleneck_DCNV4", "C2f_DCNv4", "C3k_DCNv4", "C3k2_DCNv4", "BLOCK_ALIASES"]


class DCNV4_YOLO(nn.Module, metaclass=ParsedAsStockTwin):
    """[1x1 Conv stem] -> DCNv4 (on the NCHW map, ``shape=(H, W)``) -> BatchNorm -> activation.

    Args, as the family's (inc, ouc, k=1, s=1, p=None, g=1, d=1, act=True):
        inc, ouc: input and output channels; a 1x1 Conv ``stem_conv`` maps inc -> ouc when they
            differ (the DCNv4 runs on ouc channels).
        k, s, p, d: DCNv4 kernel size, stride, padding (None: autopad) and dilation. The family's
            default kernel is 1 (one free point per group); its bottlenecks pass 3.
        g: DCNv4 groups (the family passes its default 1 from its bottlenecks); 0 picks
            ``auto_group(ouc)``.
        act: True for ultralytics' default activation (SiLU), a module, or False.

    Forward: (N, inc, H, W) -> (N, ouc, H_out, W_out).
    """

    _parsed_as = Conv

    def __init__(
        self,
        inc: int,
        ouc: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ):
        super().__init__()
        if inc != ouc:
            self.stem_conv = Conv(inc, ouc, k=1)
        self.dcnv4 = DCNv4(
            ouc, kernel_size=k, stride=s, pad=autopad(k, p, d), dilation=d, group=g if g > 0 else auto_group(ouc)
        )
        self.bn = nn.BatchNorm2d(ouc)
        self.act = Conv.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = getattr(self, "stem_conv", None)
        if stem is not None:
            x = stem(x)
        x = self.dcnv4(x, (x.size(2), x.size(3)))
        bn = getattr(self, "bn", None)  # folded into dcnv4.output_proj by fuse_batchnorm()
        return self.act(x if bn is None else bn(x))

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold the BatchNorm into the DCNv4's ``output_proj`` Linear(C, C) (inference only), as
        DCNV3_YoLo does; a projection without bias gets one. Nothing to fold into when the DCNv4
        has no pointwise layers (``without_pointwise``): the BN then stays."""
        bn = getattr(self, "bn", None)
        proj = getattr(self.dcnv4, "output_proj", None)
        if bn is None or proj is None:
            return
        fold_batchnorm_into_linear(proj, bn)
        del self.bn


class Bottleneck_DCNV4(nn.Module, metaclass=ParsedAsStockTwin):
    """Bottleneck whose second conv is DCNV4_YOLO: Conv(k[0]) c1 -> c_ = c2*e, DCNV4_YOLO(c_, c2,
    k[1], g) (with its stem where c_ != c2), plus the shortcut when ``shortcut`` and c1 == c2.

    ``g`` is the DCNv4 group count (the family's ignores it and builds group 1).
    Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = Bottleneck

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple = (3, 3), e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = DCNV4_YOLO(hidden, c2, k[1], g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f_DCNv4(C2f, metaclass=ParsedAsStockTwin):
    """C2f whose n bottlenecks are Bottleneck_DCNV4(c, c, e=1.0) (no stems: DCNv4 on c = c2*e
    channels); forward and forward_split are C2f's.

    Args as C2f: (c1, c2, n, shortcut, g, e), ``g`` the DCNv4 group count.
    Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C2f

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        build_c2f_layout(self, c1, c2, n, e, lambda c: Bottleneck_DCNV4(c, c, shortcut, g, k=(3, 3), e=1.0))


class C3k_DCNv4(C3k, metaclass=ParsedAsStockTwin):
    """C3k whose n bottlenecks are Bottleneck_DCNV4(c_, c_, k=(k, k), e=1.0) on c_ = c2*e
    channels (no stems); forward is C3's.

    Args: (c1, c2, n, shortcut, g, e, k) as the family's (shortcut defaults to False there),
    ``g`` the DCNv4 group count. Attributes as C3: cv1, cv2 (1x1 Conv c1 -> c_), cv3 (1x1 Conv
    2*c_ -> c2), m. Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C3k

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5, k: int = 3):
        build_c3k_layout(self, c1, c2, n, e, lambda c: Bottleneck_DCNV4(c, c, shortcut, g, k=(k, k), e=1.0))


class C3k2_DCNv4(C3k2, metaclass=ParsedAsStockTwin):
    """C3k2 whose inner blocks hold DCNv4: C3k_DCNv4 (c3k=True) or Bottleneck_DCNV4.

    Args: (c1, c2, n, c3k, e, g, shortcut) as the family's C3k2_DCNv4, ``g`` the DCNv4 group
    count. With c = c2*e:
    c3k=False: n x Bottleneck_DCNV4(c, c, e=0.5): Conv 3x3 c -> c/2, DCNV4_YOLO with its 1x1
        stem c/2 -> c and DCNv4 on c channels;
    c3k=True: n x C3k_DCNv4(c, c, 2 bottlenecks): DCNv4 on c/2 channels, no stems.
    ultralytics picks c3k=True at scales m, l, x (``dcnv3.yolo.blocks.dcnv3.with_stock_scale_rules``).
    forward / forward_split are C2f's. Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C3k2

    def __init__(
        self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1, shortcut: bool = True
    ):
        build_c2f_layout(
            self,
            c1,
            c2,
            n,
            e,
            lambda c: C3k_DCNv4(c, c, 2, shortcut, g) if c3k else Bottleneck_DCNV4(c, c, shortcut, g),
        )


# The names the forks use for the same classes, in YAML files and in pickles.
BLOCK_ALIASES = {
    "DCNV4_YOLO": DCNV4_YOLO,
    "DCNv4_YOLO": DCNV4_YOLO,
    "DCNV4_YoLo": DCNV4_YOLO,
    "Bottleneck_DCNV4": Bottleneck_DCNV4,
    "Bottleneck_DCNv4": Bottleneck_DCNV4,
    "C2f_DCNv4": C2f_DCNv4,
    "C2f_DCNV4": C2f_DCNv4,
    "C3k_DCNv4": C3k_DCNv4,
    "C3k_DCNV4": C3k_DCNv4,
    "C3k2_DCNv4": C3k2_DCNv4,
    "C3k2_DCNV4": C3k2_DCNv4,
}
