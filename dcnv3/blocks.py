"""YOLOv8 blocks with DCNv3: the seed article's DCNV3_YoLo, and its Bottleneck / C2f wrappers.

All three take NCHW tensors like every ultralytics block; DCNV3_YoLo permutes to channels-last
around the DCNv3 layer. Attribute names (conv, dcnv3, bn, act; cv1, cv2, m, c, add) are the
community forks', so their pickled modules are instances of these classes once loaded.

parse_model in ultralytics scales a layer's channels and repeats only for blocks in its own
tables (``m in base_modules``). While ``dcnv3.integration`` runs parse_model, ``_ParsedAs`` makes
each block compare equal to its stock twin (C2f, Bottleneck, Conv), so the stock tables apply
to it unchanged, without editing ultralytics. Identity (``is``) and ``isinstance`` tell the
classes apart throughout, and outside parse_model they are simply different classes.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn
from ultralytics.nn.modules.block import Bottleneck, C2f
from ultralytics.nn.modules.conv import Conv, autopad

from .module import DCNv3

__all__ = ["DCNV3_YoLo", "Bottleneck_DCNv3", "C2f_DCNv3", "auto_group", "CHANNELS_PER_GROUP"]

# InternImage uses 16 channels per DCNv3 group.
CHANNELS_PER_GROUP = 16


def auto_group(channels: int, channels_per_group: int = CHANNELS_PER_GROUP) -> int:
    """Groups for ``channels``: about ``channels_per_group`` channels each, at least 2, dividing C."""
    group = max(2, channels // channels_per_group)
    while channels % group:
        group -= 1
    return group


_parsing = threading.local()


@contextlib.contextmanager
def parsed_as_stock_twins():
    """While active (in this thread), each block compares equal to its stock twin."""
    previous = getattr(_parsing, "active", False)
    _parsing.active = True
    try:
        yield
    finally:
        _parsing.active = previous


class _ParsedAs(type):
    """Metaclass: during ``parsed_as_stock_twins()``, the class equals ``_parsed_as``, the stock
    block it extends. It always hashes like it (a harmless collision elsewhere), because a
    hash must not change over an object's life; equality outside parsing is identity."""

    def __eq__(cls, other):
        if cls is other:
            return True
        return getattr(_parsing, "active", False) and other is cls.__dict__.get("_parsed_as")

    def __hash__(cls):
        twin = cls.__dict__.get("_parsed_as")
        return hash(twin) if twin is not None else type.__hash__(cls)


class DCNV3_YoLo(nn.Module, metaclass=_ParsedAs):  # noqa: N801 - the seed article's name
    """1x1 Conv stem -> DCNv3 (channels-last) -> BatchNorm -> activation.

    Args:
        inc, ouc: input and output channels.
        k: DCNv3 kernel size. The seed defaults to 1, where the softmax over one point is always 1
            and the pad of 1 shifts the output; here it defaults to 3 with autopad.
        s, p, d: stride, padding (None: autopad), dilation.
        g: DCNv3 groups; 0 picks ``auto_group(ouc)`` (16 channels per group, at least 2).
        act: True for ultralytics' default activation (SiLU), a module, or False.

    Forward: (N, inc, H, W) -> (N, ouc, H_out, W_out). A fork that drops the stem when
    inc == ouc pickles no ``conv``; such modules run without it.
    """

    _parsed_as = Conv

    def __init__(self, inc: int, ouc: int, k: int = 3, s: int = 1, p: int | None = None, g: int = 1,
                 d: int = 1, act: bool | nn.Module = True):
        super().__init__()
        self.conv = Conv(inc, ouc, k=1)
        self.dcnv3 = DCNv3(ouc, kernel_size=k, stride=s, pad=autopad(k, p, d), dilation=d,
                           group=g if g > 0 else auto_group(ouc))
        self.bn = nn.BatchNorm2d(ouc)
        self.act = Conv.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = getattr(self, "conv", None)
        if stem is not None:
            x = stem(x)
        x = self.dcnv3(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        bn = getattr(self, "bn", None)  # folded into dcnv3.output_proj by fuse_batchnorm()
        return self.act(x if bn is None else bn(x))

    @torch.no_grad()
    def fuse_batchnorm(self) -> None:
        """Fold the BatchNorm into the DCNv3's ``output_proj`` (inference only), like ultralytics'
        Conv+BN fusion: the BN is a per-channel affine map s*y + t of output_proj's output y, so
        output_proj becomes (s * W, s * b + t) and the BN pass disappears. Removes ``bn``."""
        bn = getattr(self, "bn", None)
        if bn is None:
            return
        proj = self.dcnv3.output_proj
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        proj.weight.copy_(proj.weight * scale[:, None])
        proj.bias.copy_(proj.bias * scale + bn.bias - bn.running_mean * scale)
        del self.bn


class Bottleneck_DCNv3(nn.Module, metaclass=_ParsedAs):  # noqa: N801 - the forks' name
    """Bottleneck whose second conv is DCNV3_YoLo: Conv(k[0]) -> DCNV3_YoLo(k[1]) (+ shortcut).

    ``g`` is the DCNv3 group count (0: auto), as the forks pass it. Shapes: (N, c1, H, W) ->
    (N, c2, H, W).
    """

    _parsed_as = Bottleneck

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, k: tuple = (3, 3),
                 e: float = 0.5):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = DCNV3_YoLo(hidden, c2, k[1], 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f_DCNv3(C2f, metaclass=_ParsedAs):  # noqa: N801 - the forks' name
    """C2f whose bottlenecks are Bottleneck_DCNv3 (forward and forward_split are C2f's).

    Args as C2f: (c1, c2, n, shortcut, g, e) with ``g`` the DCNv3 group count of every
    bottleneck (0: auto, 16 channels per group). The DCNv3 layers run on c = c2*e channels.
    Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C2f

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1,
                 e: float = 0.5):
        nn.Module.__init__(self)  # C2f.__init__ would build stock bottlenecks only to drop them
        self.c = int(c2 * e)
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((2 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck_DCNv3(self.c, self.c, shortcut, g, k=(3, 3), e=1.0)
                               for _ in range(n))


# The names forks use for the same classes, in YAML files and in pickles.
BLOCK_ALIASES = {
    "DCNV3_YoLo": DCNV3_YoLo, "DCNV3_YOLO": DCNV3_YoLo, "DCNv3_YoLo": DCNV3_YoLo,
    "Bottleneck_DCNv3": Bottleneck_DCNv3, "Bottleneck_DCNV3": Bottleneck_DCNv3,
    "C2f_DCNv3": C2f_DCNv3, "C2f_DCNV3": C2f_DCNv3,
}
