"""YOLOv8 blocks with DCNv3: the seed article's DCNV3_YoLo, and its Bottleneck / C2f wrappers.

All three take NCHW tensors like every ultralytics block; DCNV3_YoLo permutes to channels-last
around the DCNv3 layer. Attribute names (conv, dcnv3, bn, act; cv1, cv2, m, c, add) are the
community forks', so their pickled modules are instances of these classes once loaded.

parse_model in ultralytics scales a layer's channels and repeats only for blocks in its own
tables (``m in base_modules``). While ``dcnv3.yolo`` runs parse_model, the metaclass
``ParsedAsStockTwin`` (which the DCNv2 and DCNv4 blocks use too) makes each block compare
equal to its stock twin (C2f, Bottleneck, Conv), so the stock tables apply
to it unchanged, without editing ultralytics. Identity (``is``) and ``isinstance`` tell the
classes apart throughout, and outside parse_model they are simply different classes.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from torch import nn
from ultralytics.nn.modules.block import Bottleneck, C2f, C3k, C3k2
from ultralytics.nn.modules.conv import Conv, autopad

from dcnv3.ops.dcnv3 import DCNv3

__all__ = [
    "batchnorm_affine",
    "fold_batchnorm_into_linear",
    "DCNV3_YoLo",
    "Bottleneck_DCNv3",
    "C2f_DCNv3",
    "C3k_DCNv3",
    "C3k2_DCNv3",
    "BLOCK_ALIASES",
    "ParsedAsStockTwin",
    "auto_group",
    "build_c2f_layout",
    "build_c3k_layout",
    "parsed_as_stock_twins",
    "with_stock_scale_rules",
    "CHANNELS_PER_GROUP",
]

# InternImage uses 16 channels per DCNv3 group.
CHANNELS_PER_GROUP = 16


def auto_group(channels: int, channels_per_group: int = CHANNELS_PER_GROUP) -> int:
    """Groups for ``channels``: about ``channels_per_group`` channels each, at least 2, dividing C."""
    group = max(2, channels // channels_per_group)
    while channels % group:
        group -= 1
    return group


def build_c2f_layout(block: nn.Module, c1: int, c2: int, n: int, e: float, make_inner) -> None:
    """Give a C2f-shaped container (C2f, C3k2) C2f's own layers around ``n`` inner blocks:
    ``c = int(c2 * e)``, ``cv1`` (c1 -> 2c), ``cv2`` ((2 + n) c -> c2) and ``m`` of
    ``make_inner(c)``, created in that order (as stock ultralytics does, so seeded initialisations
    match). Only ``nn.Module.__init__`` runs: the stock constructor would build stock blocks just to
    drop them. Shared by the DCNv2, DCNv3 and DCNv4 containers; their forwards are the stock ones."""
    nn.Module.__init__(block)
    block.c = int(c2 * e)
    block.cv1 = Conv(c1, 2 * block.c, 1, 1)
    block.cv2 = Conv((2 + n) * block.c, c2, 1)
    block.m = nn.ModuleList(make_inner(block.c) for _ in range(n))


def build_c3k_layout(block: nn.Module, c1: int, c2: int, n: int, e: float, make_inner) -> None:
    """Give a C3k-shaped container C3's own layers around ``n`` inner blocks: ``hidden = int(c2 * e)``,
    ``cv1`` and ``cv2`` (c1 -> hidden), ``cv3`` (2 hidden -> c2) and ``m``, an ``nn.Sequential`` of
    ``make_inner(hidden)``, in stock order; only ``nn.Module.__init__`` runs (see ``build_c2f_layout``)."""
    nn.Module.__init__(block)
    hidden = int(c2 * e)
    block.cv1 = Conv(c1, hidden, 1, 1)
    block.cv2 = Conv(c1, hidden, 1, 1)
    block.cv3 = Conv(2 * hidden, c2, 1)
    block.m = nn.Sequential(*(make_inner(hidden) for _ in range(n)))


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


class ParsedAsStockTwin(type):
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


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as the per-channel affine map y -> scale * y + shift: (scale, shift),
    each (C,). A layer whose output the BN reads folds it in as ultralytics folds Conv+BN."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


@torch.no_grad()
def fold_batchnorm_into_linear(linear: nn.Linear, bn: nn.BatchNorm2d) -> None:
    """Make ``linear`` (C_in -> C) compute bn(linear(x)) over its output channels: weight rows
    and bias scaled and shifted as ``batchnorm_affine`` says; a Linear without bias gets one."""
    scale, shift = batchnorm_affine(bn)
    linear.weight.copy_(linear.weight * scale[:, None])
    if linear.bias is None:
        linear.bias = nn.Parameter(shift.clone())
    else:
        linear.bias.copy_(linear.bias * scale + shift)


class DCNV3_YoLo(nn.Module, metaclass=ParsedAsStockTwin):
    """1x1 Conv stem -> DCNv3 (channels-last) -> BatchNorm -> activation.

    Args:
        inc, ouc: input and output channels.
        k: DCNv3 kernel size. The seed defaults to 1, where the softmax over one point is always 1
            and the pad of 1 shifts the output; here it defaults to 3 with autopad.
        s, p, d: stride, padding (None: autopad), dilation.
        g: DCNv3 groups; 0 picks ``auto_group(ouc)`` (16 channels per group, at least 2).
        act: True for ultralytics' default activation (SiLU), a module, or False.
        stem: build the 1x1 Conv stem ``conv`` (the seed article always does). False needs
            inc == ouc: the extra_modules family's DCNV3_YOLO drops the stem then, and the
            YOLO11 blocks below follow it so that its checkpoints and ours share one structure.

    Forward: (N, inc, H, W) -> (N, ouc, H_out, W_out). A module without ``conv`` (built with
    stem=False, or pickled so by a fork) runs without the stem.
    """

    _parsed_as = Conv

    def __init__(
        self,
        inc: int,
        ouc: int,
        k: int = 3,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
        stem: bool = True,
    ):
        super().__init__()
        if stem:
            self.conv = Conv(inc, ouc, k=1)
        elif inc != ouc:
            raise ValueError(f"a DCNV3_YoLo without stem needs inc == ouc, got {inc} and {ouc}")
        self.dcnv3 = DCNv3(
            ouc, kernel_size=k, stride=s, pad=autopad(k, p, d), dilation=d, group=g if g > 0 else auto_group(ouc)
        )
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
        fold_batchnorm_into_linear(self.dcnv3.output_proj, bn)
        del self.bn


class Bottleneck_DCNv3(nn.Module, metaclass=ParsedAsStockTwin):
    """Bottleneck whose second conv is DCNV3_YoLo: Conv(k[0]) -> DCNV3_YoLo(k[1]) (+ shortcut).

    ``g`` is the DCNv3 group count (0: auto), as the forks pass it; ``stem`` is DCNV3_YoLo's
    (None: a stem only where the DCNv3 block changes the channels, c2*e != c2). Shapes:
    (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = Bottleneck

    def __init__(
        self,
        c1: int,
        c2: int,
        shortcut: bool = True,
        g: int = 1,
        k: tuple = (3, 3),
        e: float = 0.5,
        stem: bool | None = True,
    ):
        super().__init__()
        hidden = int(c2 * e)
        self.cv1 = Conv(c1, hidden, k[0], 1)
        self.cv2 = DCNV3_YoLo(hidden, c2, k[1], 1, g=g, stem=hidden != c2 if stem is None else stem)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f_DCNv3(C2f, metaclass=ParsedAsStockTwin):
    """C2f whose bottlenecks are Bottleneck_DCNv3 (forward and forward_split are C2f's).

    Args as C2f: (c1, c2, n, shortcut, g, e) with ``g`` the DCNv3 group count of every
    bottleneck (0: auto, 16 channels per group). The DCNv3 layers run on c = c2*e channels.
    Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C2f

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5):
        build_c2f_layout(self, c1, c2, n, e, lambda c: Bottleneck_DCNv3(c, c, shortcut, g, k=(3, 3), e=1.0))


class C3k_DCNv3(C3k, metaclass=ParsedAsStockTwin):
    """C3k whose bottlenecks are Bottleneck_DCNv3 with k x k convolutions (forward is C3's).

    Args: (c1, c2, n, shortcut, g, e, k) as the forks' C3k_DCNv3 (shortcut defaults to False
    there, unlike stock C3k); ``g`` is the DCNv3 group count (0: auto). The n bottlenecks run
    on c_ = c2*e channels, and their DCNv3 blocks have no stem (c_ in, c_ out), as the forks'.
    Attributes as C3: cv1, cv2 (1x1 Conv c1 -> c_ each), cv3 (1x1 Conv 2*c_ -> c2), m.
    Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C3k

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = False, g: int = 1, e: float = 0.5, k: int = 3):
        build_c3k_layout(self, c1, c2, n, e, lambda c: Bottleneck_DCNv3(c, c, shortcut, g, k=(k, k), e=1.0, stem=None))


class C3k2_DCNv3(C3k2, metaclass=ParsedAsStockTwin):
    """C3k2 whose inner blocks hold DCNv3: C3k_DCNv3 (c3k=True) or Bottleneck_DCNv3.

    Args: (c1, c2, n, c3k, e, g, shortcut) as the forks' C3k2_DCNv3 (stock C3k2 of ultralytics
    8.4 has an ``attn`` argument before ``g``; the forks' has none, and neither has this one).
    ``g`` is the DCNv3 group count (0: auto, 16 channels per group). With c = c2*e:
    c3k=False: n x Bottleneck_DCNv3(c, c, e=0.5): Conv 3x3 c -> c/2, DCNV3_YoLo with its
        1x1 stem c/2 -> c and DCNv3 on c channels;
    c3k=True: n x C3k_DCNv3(c, c, 2 bottlenecks): DCNv3 on c/2 channels, no stems.
    ultralytics picks c3k=True at scales m, l, x for C3k2; ``with_stock_scale_rules`` does it for
    this twin. forward / forward_split are C2f's. Shapes: (N, c1, H, W) -> (N, c2, H, W).
    """

    _parsed_as = C3k2

    def __init__(
        self, c1: int, c2: int, n: int = 1, c3k: bool = False, e: float = 0.5, g: int = 1, shortcut: bool = True
    ):
        def inner(c):
            return C3k_DCNv3(c, c, 2, shortcut, g) if c3k else Bottleneck_DCNv3(c, c, shortcut, g, stem=None)

        build_c2f_layout(self, c1, c2, n, e, inner)


# The names forks use for the same classes, in YAML files and in pickles.
BLOCK_ALIASES = {
    "DCNV3_YoLo": DCNV3_YoLo,
    "DCNV3_YOLO": DCNV3_YoLo,
    "DCNv3_YoLo": DCNV3_YoLo,
    "Bottleneck_DCNv3": Bottleneck_DCNv3,
    "Bottleneck_DCNV3": Bottleneck_DCNv3,
    "C2f_DCNv3": C2f_DCNv3,
    "C2f_DCNV3": C2f_DCNv3,
    "C3k_DCNv3": C3k_DCNv3,
    "C3k_DCNV3": C3k_DCNv3,
    "C3k2_DCNv3": C3k2_DCNv3,
    "C3k2_DCNV3": C3k2_DCNv3,
}


def with_stock_scale_rules(model_dict: dict, aliases: dict | None = None) -> dict:
    """A model dict (a parsed model YAML) whose C3k2 twins' lines carry what parse_model gives
    C3k2 itself by identity (``m is C3k2``), which ``ParsedAsStockTwin`` cannot reach: at scales m, l
    and x, c3k=True (the YAML's second argument; stock does ``args[3:4] = [True]`` after
    inserting c1 and the repeats). At other scales the dict itself; at m, l, x a copy with those
    lines rewritten and every other line as it was. The input is never modified.

    The other identity rule there, ``legacy = False`` for the Detect head once a C3k2 is seen,
    comes from the stock C3k2 layers that the YOLO11 / YOLO26 YAMLs keep (layer 2 and the head);
    a YAML whose only C3k2-shaped layers are twins would get the legacy (YOLOv8) head.

    ``aliases``: YAML name -> block class (default: this module's ``BLOCK_ALIASES``; ``dcnv3.yolo``
    passes the DCNv2 and DCNv4 blocks' too).
    """
    aliases = BLOCK_ALIASES if aliases is None else aliases
    scales, scale = model_dict.get("scales"), model_dict.get("scale")
    if scales and not scale:
        scale = next(iter(scales))  # parse_model's own fallback
    if scale not in {"m", "l", "x"}:
        return model_dict
    rewritten = dict(model_dict)
    for part in ("backbone", "head"):
        lines = []
        for line in model_dict.get(part) or []:
            if len(line) == 4 and getattr(aliases.get(line[2]), "_parsed_as", None) is C3k2:
                args = list(line[3])
                args[1:2] = [True]  # also supplies c3k when the YAML omits it
                line = [line[0], line[1], line[2], args]
            lines.append(line)
        rewritten[part] = lines
    return rewritten
