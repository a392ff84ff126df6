"""Community-fork modules recognised by what they hold, then given the class of ours that computes
what the fork's forward computed.

Why one module (over 400 lines): every family's recognisers read the same placeholder state and are
tried in one order by adopt_fork_modules, with one table (_FAMILIES) of the classes of ours they
become.

Forks pickle their DCNv3 classes under their own copies of ultralytics, and the same name means
different things in different forks (``DCNv3_PyTorch`` is a whole block in one, the operator in
another; ``DCNv3`` has InternImage's LayerNorm depthwise branch in one family and an ultralytics
``Conv`` in another). So names decide nothing here. The restricted unpickler
(``dcnv3.yolo.checkpoints``) restores every class that stock ultralytics lacks as a ``ForkModule``: a
placeholder that holds the saved state and computes nothing. ``adopt_fork_modules`` then walks
each network, innermost modules first, and re-classes every placeholder whose state matches one
of these shapes (all children, attributes and parameter shapes checked):

=====================  =========================================================  ==================
shape                  what it holds                                               becomes
=====================  =========================================================  ==================
DCNv3 operator         ``offset``, ``mask``, ``input_proj``, ``output_proj``         ``DCNv3``
                       Linears of matching sizes; ``dw_conv``: InternImage's        (``DCNv3ConvDW``
                       Conv2d -> LN/BN -> act (channels-last out), or an            for the Conv
                       ultralytics Conv (channels-first out); channels, group,      branch)
                       kernel_size, stride, pad, dilation, offset_scale
DCNv3 block            ``dcnv3`` (an operator above), ``bn``, an activation          ``DCNV3_YoLo``
                       (``act`` or ``gelu``), an optional 1x1 Conv stem
                       (``conv`` or ``stem_conv``)
DCNv4 operator         ``offset_mask`` Linear(C, G*3P rounded up to 8),            ``DCNv4``
                       ``value_proj`` / ``output_proj`` Linear(C, C) unless
                       ``without_pointwise``, ``offset_mask_dw`` (depthwise
                       Conv2d) iff ``dw_kernel_size``; stride 1 with centred pad
DCNv4 block            ``dcnv4`` (a DCNv4), ``bn``, ``act``, an optional 1x1 Conv   ``DCNV4_YOLO``
                       stem ``stem_conv``
DCNv2 block            ``weight``, ``bias``, ``conv_offset_mask`` (Conv2d to        ``DCNv2``
                       3*G*K*K on the layer's grid), ``bn``, ``act``; geometry
                       pairs (kernel_size, stride, padding, dilation), groups,
                       deformable_groups
DCNv2_Dynamic          the same with ``conv_offset_mask`` = DCNv2_Offset_Attention   ``DCNv2_Dynamic``
                       (``conv_offset_mask`` Conv2d, ``attention`` MPCA: ``gap``,   (head:
                       ``pool_h``, ``pool_w``, ``conv_hw``, ``conv_pool_hw``)       ``DCNv2OffsetAttention``,
                                                                                  ``MPCA``)
Bottleneck             ``cv1`` (Conv), ``cv2`` (a DCNv3, DCNv4 or DCNv2 block),      ``Bottleneck_DCNv3``
                       ``add``                                                      / ``_DCNV4`` / ``_DCNV2``
C3 / C3k               ``cv1``, ``cv2``, ``cv3`` (Convs), ``m`` (Sequential of       ``C3k_DCNv3`` /
                       one operator's bottlenecks)                                  ``C3k_DCNv4``
C2f / C3k2             ``cv1``, ``cv2`` (Convs), ``c``, ``m`` (ModuleList of one     ``C2f_`` /
                       operator's bottlenecks or C3k)                               ``C3k2_DCNv3|v4``
=====================  =========================================================  ==================

plus InternImage's stateless helpers (``to_channels_last``, ``to_channels_first``,
``CenterFeatureScaleModule``), which hold nothing, so their name is all there is to go by.
Attribute spellings are normalised onto ours (DCNv3 blocks: ``stem_conv`` -> ``conv``, ``gelu`` ->
``act``; DCNv4 blocks keep the family's ``stem_conv``), keeping the order of the children. The
containers take their classes from the operator of the blocks inside (``_FAMILIES``). A C2f- and a
C3k2-shaped container compute the same (C2f's forward); it becomes ``C3k2_DCNv3`` when it holds C3k
blocks or its name says C3k2.

A placeholder that matches nothing is reported by ``UnknownLayoutError`` with what it holds,
and nothing of the file has run.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

from torch import nn
from ultralytics.nn.modules.conv import Conv

from dcnv3.ops import dcnv3 as module
from dcnv3.ops.dcnv3 import DCNv3, DCNv3ConvDW
from dcnv3.ops.dcnv4 import DCNv4, offset_mask_channels
from dcnv3.yolo.blocks import dcnv2 as blocks_dcnv2
from dcnv3.yolo.blocks import dcnv3 as blocks
from dcnv3.yolo.blocks import dcnv4 as blocks_dcnv4

__all__ = [
    "ForkModule",
    "fork_placeholder",
    "adopt_fork_modules",
    "UnknownLayoutError",
    "DOCS_SECTION",
    "KNOWN_LAYERS",
]

DOCS_SECTION = "docs/checkpoints.md, 'Checkpoint layouts that load'"
KNOWN_LAYERS = (
    "InternImage's DCNv3 / DCNv3_pytorch (ops v1.0 and v1.1), the extra_modules "
    "family's DCNv3 with a Conv depthwise branch, the DCNv3 blocks around them "
    "(DCNv3_PyTorch, DCNV3_YOLO, DCNV3_YoLo); OpenGVLab's DCNv4 (offset_mask, value_proj, "
    "output_proj, optional offset_mask_dw, without_pointwise) at stride 1 and the "
    "extra_modules family's DCNV4_YOLO around it; the extra_modules family's DCNv2 and "
    "DCNv2_Dynamic (torchvision deform_conv2d; MPCA offset attention); Bottleneck / C2f / C3 / "
    "C3k / C3k2 containers of those blocks"
)
MAX_FORK_CLASSES = 1024  # distinct class names one process restores as placeholders


class UnknownLayoutError(ValueError):
    """A checkpoint holds fork modules that match no known layout; the message says what they hold."""


class ForkModule(nn.Module):
    """State-only stand-in for a class a fork pickled and stock ultralytics lacks.

    ``fork_class`` is the pickled qualified name. It holds the saved state (children, parameters,
    attributes) and computes nothing: ``adopt_fork_modules`` gives it a class of ours, or refuses.
    """

    fork_class = "?"

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.fork_class} was not recognised; DeformLens does not run fork code")


_placeholders: dict[str, type] = {}
_lock = threading.Lock()


def fork_placeholder(module_name: str, name: str) -> type:
    """The ForkModule subclass standing for ``module_name.name`` (one per qualified name)."""
    qualified = f"{module_name}.{name}"
    with _lock:
        if qualified not in _placeholders:
            if len(_placeholders) >= MAX_FORK_CLASSES or len(qualified) > 300 or not name.isidentifier():
                raise UnknownLayoutError(
                    f"refused: the checkpoint names the class '{qualified[:300]}', which no detection checkpoint needs"
                )
            _placeholders[qualified] = type(
                name,
                (ForkModule,),
                {"fork_class": qualified, "__module__": __name__, "__qualname__": f"ForkModule[{qualified}]"},
            )
        return _placeholders[qualified]


def _short(module: nn.Module) -> str:
    return module.fork_class.rsplit(".", 1)[-1] if isinstance(module, ForkModule) else type(module).__name__


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Shapes. Each takes a placeholder whose children are already adopted and returns
# (class of ours, None) or (None, what does not fit).
# ---------------------------------------------------------------------------------------------

_STATELESS = {
    "to_channels_last": module.to_channels_last,
    "to_channels_first": module.to_channels_first,
    "CenterFeatureScaleModule": module.CenterFeatureScaleModule,
}
_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardswish, nn.Mish, nn.Identity)


def _stateless(candidate: nn.Module):
    target = _STATELESS.get(_short(candidate))
    if target is None:
        return None, "holds nothing"
    if candidate._modules or candidate._parameters or candidate._buffers:
        return None, f"holds state, unlike InternImage's stateless {_short(candidate)}"
    return target, None


def _depthwise(conv, channels: int) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.in_channels == conv.out_channels == channels and conv.groups == channels


def _dw_branch_kind(dw_conv, channels: int):
    """DCNv3 (InternImage's Conv2d -> norm -> act, channels-last out), DCNv3ConvDW (an
    ultralytics Conv, channels-first out), or None."""
    if isinstance(dw_conv, Conv) and _depthwise(dw_conv.conv, channels):
        bn = getattr(dw_conv, "bn", None)  # absent once fused
        if bn is None or (isinstance(bn, nn.BatchNorm2d) and bn.num_features == channels):
            return DCNv3ConvDW
        return None
    if not (
        isinstance(dw_conv, nn.Sequential)
        and len(dw_conv) == 3
        and _depthwise(dw_conv[0], channels)
        and isinstance(dw_conv[1], nn.Sequential)
        and isinstance(dw_conv[2], _ACTIVATIONS)
    ):
        return None
    norm = list(dw_conv[1])
    layer_norm = (
        len(norm) == 2
        and isinstance(norm[0], module.to_channels_last)
        and isinstance(norm[1], nn.LayerNorm)
        and tuple(norm[1].normalized_shape) == (channels,)
    )
    batch_norm = (
        len(norm) == 2
        and isinstance(norm[0], nn.BatchNorm2d)
        and norm[0].num_features == channels
        and isinstance(norm[1], module.to_channels_last)
    )
    return DCNv3 if layer_norm or batch_norm else None


_OPERATOR_CHILDREN = {"dw_conv", "offset", "mask", "input_proj", "output_proj"}
_OPERATOR_NUMBERS = ("channels", "kernel_size", "stride", "pad", "dilation", "group", "group_channels")


def _operator(candidate: nn.Module):
    children = set(candidate._modules)
    if not _OPERATOR_CHILDREN <= children:
        return None, None
    extra = children - _OPERATOR_CHILDREN - {"center_feature_scale_module"}
    if extra:
        return None, f"a DCNv3-like operator with unknown children {sorted(extra)}"
    state = candidate.__dict__
    missing = [a for a in _OPERATOR_NUMBERS if not _is_int(state.get(a))]
    if missing or not isinstance(state.get("offset_scale"), (int, float)):
        return None, f"a DCNv3-like operator without integer {missing or ['offset_scale']}"
    channels, group, k = state["channels"], state["group"], state["kernel_size"]
    remove_center = int(state.get("remove_center", 0))  # ops v1.0 pickles have none
    points = k * k - remove_center
    linears = {n: candidate._modules[n] for n in ("offset", "mask", "input_proj", "output_proj")}
    expected = {"offset": group * points * 2, "mask": group * points, "input_proj": channels, "output_proj": channels}
    for name, layer in linears.items():
        if not (
            isinstance(layer, nn.Linear) and layer.in_features == channels and layer.out_features == expected[name]
        ):
            return None, (
                f"a DCNv3-like operator whose `{name}` is not Linear({channels}, {expected[name]}) "
                f"(channels {channels}, group {group}, {points} points)"
            )
    if (
        min(channels, group, k, state["stride"], state["dilation"]) < 1
        or channels % group
        or state["group_channels"] != channels // group
        or (remove_center and k % 2 == 0)
    ):
        return (
            None,
            f"a DCNv3-like operator with inconsistent geometry (channels {channels}, group {group}, kernel {k})",
        )
    if state.get("center_feature_scale"):
        weight = candidate._parameters.get("center_feature_scale_proj_weight")
        bias = candidate._parameters.get("center_feature_scale_proj_bias")
        if (
            weight is None
            or bias is None
            or tuple(weight.shape) != (group, channels)
            or tuple(bias.shape) != (group,)
            or not isinstance(candidate._modules.get("center_feature_scale_module"), module.CenterFeatureScaleModule)
        ):
            return None, "a DCNv3-like operator with center_feature_scale but without its projection"
    dw_conv = candidate._modules["dw_conv"]
    kind = _dw_branch_kind(dw_conv, channels)
    if kind is None:
        return None, f"a DCNv3-like operator with an unknown depthwise branch `dw_conv` ({_short(dw_conv)})"
    depthwise = dw_conv.conv if kind is DCNv3ConvDW else dw_conv[0]
    if tuple(depthwise.stride) != (state["stride"],) * 2:
        # The forks' depthwise branch always has stride 1, and their forward then breaks for a
        # strided DCNv3 (offsets on the input grid); ours runs that branch at the layer's stride.
        return None, (
            f"a DCNv3-like operator of stride {state['stride']} whose depthwise branch has "
            f"stride {tuple(depthwise.stride)}: its own forward could not have run"
        )
    return kind, None


def _normalise_children(candidate: nn.Module, renames: dict[str, str]) -> None:
    """Rename children in place (``stem_conv`` -> ``conv``), keeping their order."""
    if any(old in candidate._modules for old in renames):
        candidate._modules = type(candidate._modules)(
            (renames.get(name, name), child) for name, child in candidate._modules.items()
        )


def _block(candidate: nn.Module):
    children = candidate._modules
    if "dcnv3" not in children:
        return None, None
    operator = children["dcnv3"]
    if not isinstance(operator, DCNv3):
        return None, f"a DCNv3 block whose `dcnv3` is an unknown `{_short(operator)}`"
    stems = [n for n in ("conv", "stem_conv") if n in children]
    acts = [n for n in ("act", "gelu") if n in children]
    extra = set(children) - {"dcnv3", "bn", "conv", "stem_conv", "act", "gelu"}
    if extra or len(stems) > 1 or len(acts) != 1 or "bn" not in children:
        return None, (
            f"a DCNv3 block holding {sorted(children)} (known: dcnv3, bn, act or gelu, an optional conv or stem_conv)"
        )
    bn, act = children["bn"], children[acts[0]]
    if not (isinstance(bn, nn.BatchNorm2d) and bn.num_features == operator.channels):
        return None, f"a DCNv3 block whose `bn` is not BatchNorm2d({operator.channels})"
    if not isinstance(act, _ACTIVATIONS):
        return None, f"a DCNv3 block with an unknown activation `{_short(act)}`"
    if stems:
        stem = children[stems[0]]
        if not (isinstance(stem, Conv) and stem.conv.out_channels == operator.channels):
            return None, f"a DCNv3 block whose stem `{stems[0]}` is not a Conv to {operator.channels} channels"
    _normalise_children(candidate, {"stem_conv": "conv", "gelu": "act"})
    return blocks.DCNV3_YoLo, None


# --- DCNv4 (OpenGVLab/DCNv4's module, and the extra_modules family's DCNV4_YOLO around it) ---

_DCNV4_CHILDREN = {"offset_mask", "value_proj", "output_proj", "offset_mask_dw", "center_feature_scale_module"}
_DCNV4_NUMBERS = ("channels", "kernel_size", "stride", "pad", "dilation", "group", "group_channels")


def _dcnv4_operator(candidate: nn.Module):
    """DCNv4: an ``offset_mask`` Linear(C, G*3P padded to a multiple of 8), ``value_proj`` and
    ``output_proj`` Linear(C, C) unless ``without_pointwise``, ``offset_mask_dw`` (depthwise
    Conv2d) exactly when ``dw_kernel_size`` is set, the center_feature_scale projection when set."""
    children = candidate._modules
    state = candidate.__dict__
    if "offset_mask" not in children or "without_pointwise" not in state:
        return None, None
    extra = set(children) - _DCNV4_CHILDREN
    if extra:
        return None, f"a DCNv4-like operator with unknown children {sorted(extra)}"
    missing = [a for a in _DCNV4_NUMBERS if not _is_int(state.get(a))]
    if missing or not isinstance(state.get("offset_scale"), (int, float)):
        return None, f"a DCNv4-like operator without integer {missing or ['offset_scale']}"
    channels, group, k = state["channels"], state["group"], state["kernel_size"]
    remove_center = state.get("remove_center", 0)
    dw_kernel = state.get("dw_kernel_size")
    if (
        not (_is_int(remove_center) or isinstance(remove_center, bool))
        or not isinstance(state["without_pointwise"], bool)
        or not (dw_kernel is None or _is_int(dw_kernel))
    ):
        return None, "a DCNv4-like operator whose remove_center, without_pointwise or dw_kernel_size is malformed"
    if (
        min(channels, group, k, state["stride"], state["dilation"]) < 1
        or channels % group
        or state["group_channels"] != channels // group
        or (remove_center and k % 2 == 0)
    ):
        return (
            None,
            f"a DCNv4-like operator with inconsistent geometry (channels {channels}, group {group}, kernel {k})",
        )
    if state["stride"] != 1 or state["pad"] != (state["dilation"] * (k - 1)) // 2:
        # DCNv4 predicts offset_mask at every input pixel and its kernel reads that as the output
        # grid: only at stride 1 with centred padding is that a convolution ours reproduces (any
        # other pad breaks the fork's own reshape; stride 2 reads offsets of the wrong cells).
        return None, (
            f"a DCNv4 of stride {state['stride']}, pad {state['pad']}, kernel {k}, dilation "
            f"{state['dilation']}: only stride 1 with pad (dilation*(K-1))//2 computes a DCNv4 "
            f"that DeformLens reproduces"
        )
    width = offset_mask_channels(group, k, remove_center)
    layer = children["offset_mask"]
    if not (isinstance(layer, nn.Linear) and layer.in_features == channels and layer.out_features == width):
        return None, f"a DCNv4-like operator whose `offset_mask` is not Linear({channels}, {width})"
    pointwise = {n for n in ("value_proj", "output_proj") if n in children}
    if pointwise != (set() if state["without_pointwise"] else {"value_proj", "output_proj"}):
        return (
            None,
            f"a DCNv4-like operator (without_pointwise {state['without_pointwise']}) holding {sorted(pointwise)}",
        )
    for name in pointwise:
        layer = children[name]
        if not (isinstance(layer, nn.Linear) and layer.in_features == layer.out_features == channels):
            return None, f"a DCNv4-like operator whose `{name}` is not Linear({channels}, {channels})"
    if (dw_kernel is None) != ("offset_mask_dw" not in children):
        return None, "a DCNv4-like operator whose offset_mask_dw and dw_kernel_size disagree"
    if dw_kernel is not None:
        dw = children["offset_mask_dw"]
        if not (
            _depthwise(dw, channels)
            and tuple(dw.kernel_size) == (dw_kernel,) * 2
            and tuple(dw.stride) == (1, 1)
            and tuple(dw.padding) == ((dw_kernel - 1) // 2,) * 2
        ):
            return None, f"a DCNv4-like operator whose offset_mask_dw is not a depthwise {dw_kernel}x{dw_kernel} Conv2d"
    if state.get("center_feature_scale"):
        weight = candidate._parameters.get("center_feature_scale_proj_weight")
        bias = candidate._parameters.get("center_feature_scale_proj_bias")
        if (
            weight is None
            or bias is None
            or tuple(weight.shape) != (group, channels)
            or tuple(bias.shape) != (group,)
            or not isinstance(children.get("center_feature_scale_module"), module.CenterFeatureScaleModule)
        ):
            return None, "a DCNv4-like operator with center_feature_scale but without its projection"
    return DCNv4, None


def _dcnv4_block(candidate: nn.Module):
    """DCNV4_YOLO: ``dcnv4`` (a DCNv4), ``bn``, ``act``, an optional 1x1 Conv stem ``stem_conv``."""
    children = candidate._modules
    if "dcnv4" not in children:
        return None, None
    operator = children["dcnv4"]
    if not isinstance(operator, DCNv4):
        return None, f"a DCNv4 block whose `dcnv4` is an unknown `{_short(operator)}`"
    if set(children) - {"stem_conv"} != {"dcnv4", "bn", "act"}:
        return None, f"a DCNv4 block holding {sorted(children)} (known: dcnv4, bn, act, an optional stem_conv)"
    bn, act = children["bn"], children["act"]
    if not (isinstance(bn, nn.BatchNorm2d) and bn.num_features == operator.channels):
        return None, f"a DCNv4 block whose `bn` is not BatchNorm2d({operator.channels})"
    if not isinstance(act, _ACTIVATIONS):
        return None, f"a DCNv4 block with an unknown activation `{_short(act)}`"
    stem = children.get("stem_conv")
    if stem is not None and not (isinstance(stem, Conv) and stem.conv.out_channels == operator.channels):
        return None, f"a DCNv4 block whose stem `stem_conv` is not a Conv to {operator.channels} channels"
    return blocks_dcnv4.DCNV4_YOLO, None


# --- DCNv2 (the extra_modules family's DCNv2 and DCNv2_Dynamic, on torchvision's deform_conv2d) ---


def _square(value) -> int | None:
    """An int, or a pair of equal ints (the family keeps kernel_size, stride, ... as pairs), as one
    int; None for anything else."""
    if _is_int(value):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value) and value[0] == value[1]:
        return value[0]
    return None


def _conv_geometry(conv: nn.Conv2d) -> tuple:
    return tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups


def _pool_size(pool: nn.AdaptiveAvgPool2d) -> tuple:
    size = pool.output_size
    return tuple(size) if isinstance(size, (tuple, list)) else (size, size)


def _dcnv2_mpca(candidate: nn.Module):
    """The family's MPCA (attention.py): ``gap`` (global average pool -> 1x1 Conv), ``pool_h`` /
    ``pool_w`` (row and column average pools), ``conv_hw`` ((3, 1) Conv), ``conv_pool_hw`` (1x1
    Conv), all C -> C."""
    children = candidate._modules
    if set(children) != {"gap", "pool_h", "pool_w", "conv_hw", "conv_pool_hw"}:
        return None, None
    gap, pool_h, pool_w = children["gap"], children["pool_h"], children["pool_w"]
    convs = {
        "gap.1": gap[1] if isinstance(gap, nn.Sequential) and len(gap) == 2 else None,
        "conv_hw": children["conv_hw"],
        "conv_pool_hw": children["conv_pool_hw"],
    }
    pools = [(gap[0] if convs["gap.1"] is not None else None, (1, 1)), (pool_h, (None, 1)), (pool_w, (1, None))]
    if not all(isinstance(pool, nn.AdaptiveAvgPool2d) and _pool_size(pool) == size for pool, size in pools):
        return None, "an MPCA-shaped attention whose gap / pool_h / pool_w are not its average pools"
    if not all(isinstance(conv, Conv) for conv in convs.values()):
        return None, "an MPCA-shaped attention whose gap / conv_hw / conv_pool_hw are not Convs"
    channels = convs["gap.1"].conv.in_channels
    kernels = {"gap.1": ((1, 1), (0, 0)), "conv_hw": ((3, 1), (1, 0)), "conv_pool_hw": ((1, 1), (0, 0))}
    for name, conv in convs.items():
        kernel, padding = kernels[name]
        if (
            _conv_geometry(conv.conv) != (kernel, (1, 1), padding, (1, 1), 1)
            or conv.conv.in_channels != channels
            or conv.conv.out_channels != channels
        ):
            return None, f"an MPCA-shaped attention whose `{name}` is not a {kernel} Conv({channels}, {channels})"
    return blocks_dcnv2.MPCA, None


def _dcnv2_offset_attention(candidate: nn.Module):
    """The family's DCNv2_Offset_Attention: ``conv_offset_mask`` (Conv2d) then ``attention`` (MPCA)
    over its ``out_channel`` channels."""
    children = candidate._modules
    if set(children) != {"conv_offset_mask", "attention"}:
        return None, None
    conv, attention = children["conv_offset_mask"], children["attention"]
    if not (
        isinstance(conv, nn.Conv2d)
        and isinstance(attention, blocks_dcnv2.MPCA)
        and attention.gap[1].conv.in_channels == conv.out_channels == candidate.__dict__.get("out_channel")
    ):
        return None, (
            "a DCNv2_Offset_Attention-shaped head (conv_offset_mask, attention) whose Conv2d, MPCA "
            "and out_channel do not agree"
        )
    return blocks_dcnv2.DCNv2OffsetAttention, None


_DCNV2_NUMBERS = ("in_channels", "out_channels", "groups", "deformable_groups")


def _dcnv2(candidate: nn.Module):
    """The family's DCNv2 / DCNv2_Dynamic conv block: ``weight`` (C_out, C_in // groups, K, K),
    ``bias``, ``conv_offset_mask`` (a Conv2d, or the Dynamic variant's offset attention head) to
    3*G*K*K channels on the layer's grid, ``bn``, ``act``. Its geometry pairs become our ints
    (``padding`` -> ``pad``)."""
    children, state = candidate._modules, candidate.__dict__
    if "conv_offset_mask" not in children or "deformable_groups" not in state:
        return None, None
    if set(children) != {"conv_offset_mask", "bn", "act"}:
        return None, f"a DCNv2-like block holding {sorted(children)} (known: conv_offset_mask, bn, act)"
    geometry = {name: _square(state.get(name)) for name in ("kernel_size", "stride", "padding", "dilation")}
    missing = [name for name in _DCNV2_NUMBERS if not _is_int(state.get(name))]
    missing += [name for name, value in geometry.items() if value is None]
    if missing:
        return None, f"a DCNv2-like block without integer (square) {missing}"
    c_in, c_out, groups, offset_groups = (state[name] for name in _DCNV2_NUMBERS)
    k, stride, pad, dilation = (geometry[name] for name in ("kernel_size", "stride", "padding", "dilation"))
    if (
        min(c_in, c_out, groups, offset_groups, k, stride, dilation) < 1
        or pad < 0
        or c_in % groups
        or c_in % offset_groups
    ):
        return (
            None,
            f"a DCNv2-like block with inconsistent geometry ({c_in} -> {c_out}, groups {groups}, "
            f"deformable_groups {offset_groups}, kernel {k})",
        )
    weight, bias = candidate._parameters.get("weight"), candidate._parameters.get("bias")
    if (
        weight is None
        or tuple(weight.shape) != (c_out, c_in // groups, k, k)
        or not (bias is None or tuple(bias.shape) == (c_out,))
    ):
        return (
            None,
            f"a DCNv2-like block whose weight is not ({c_out}, {c_in // groups}, {k}, {k}) with a ({c_out},) bias",
        )
    head = children["conv_offset_mask"]
    target, conv = {
        nn.Conv2d: (blocks_dcnv2.DCNv2, head),
        blocks_dcnv2.DCNv2OffsetAttention: (blocks_dcnv2.DCNv2_Dynamic, getattr(head, "conv_offset_mask", None)),
    }.get(type(head), (None, None))
    if target is None:
        return None, f"a DCNv2-like block with an unknown offset head `{_short(head)}`"
    width = 3 * offset_groups * k * k
    if conv.in_channels != c_in or conv.out_channels != width:
        return None, f"a DCNv2-like block whose offset head is not Conv2d({c_in}, {width})"
    if _conv_geometry(conv)[:4] != ((k, k), (stride,) * 2, (pad,) * 2, (dilation,) * 2):
        # The family's offset Conv2d has no dilation: with dilation > 1 its own forward could not run.
        return None, (
            f"a DCNv2-like block whose offset head (kernel, stride, padding, dilation "
            f"{_conv_geometry(conv)[:4]}) does not predict on its {k}x{k} stride-{stride} grid"
        )
    bn, act = children["bn"], children["act"]
    if not (isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_out):
        return None, f"a DCNv2-like block whose `bn` is not BatchNorm2d({c_out})"
    if not isinstance(act, _ACTIVATIONS):
        return None, f"a DCNv2-like block with an unknown activation `{_short(act)}`"
    state.update(kernel_size=k, stride=stride, dilation=dilation, pad=pad)  # our ints (dcnv3.ops.dcnv2.DCNv2)
    state.pop("padding", None)
    return target, None


# --- Containers, for every operator's blocks ---


class _BlockFamily(NamedTuple):
    """One operator's YOLO block classes: what a Bottleneck / C3k / C2f / C3k2 holding its block
    becomes, and how to read the block's input channels (its stem's, else its operator's)."""

    bottleneck: type
    c3k: type
    c2f: type
    c3k2: type
    stems: tuple[str, ...]
    operator: str


# Block class -> its family. Containers are adopted innermost first, so a Bottleneck sees its
# block already adopted and a C2f its bottlenecks.
_FAMILIES = {
    blocks.DCNV3_YoLo: _BlockFamily(
        blocks.Bottleneck_DCNv3, blocks.C3k_DCNv3, blocks.C2f_DCNv3, blocks.C3k2_DCNv3, ("conv",), "dcnv3"
    ),
    blocks_dcnv4.DCNV4_YOLO: _BlockFamily(
        blocks_dcnv4.Bottleneck_DCNV4,
        blocks_dcnv4.C3k_DCNv4,
        blocks_dcnv4.C2f_DCNv4,
        blocks_dcnv4.C3k2_DCNv4,
        ("stem_conv",),
        "dcnv4",
    ),
    # DCNv2 blocks are their own operator (operator None). The Dynamic classes subclass the plain
    # ones, so they come first for _family_of's isinstance.
    blocks_dcnv2.DCNv2_Dynamic: _BlockFamily(
        blocks_dcnv2.Bottleneck_DCNV2_Dynamic,
        blocks_dcnv2.C3k_DCNv2_Dynamic,
        blocks_dcnv2.C2f_DCNv2_Dynamic,
        blocks_dcnv2.C3k2_DCNv2_Dynamic,
        (),
        None,
    ),
    blocks_dcnv2.DCNv2: _BlockFamily(
        blocks_dcnv2.Bottleneck_DCNV2, blocks_dcnv2.C3k_DCNv2, blocks_dcnv2.C2f_DCNv2, blocks_dcnv2.C3k2_DCNv2, (), None
    ),
}


def _family_of(block: nn.Module) -> _BlockFamily | None:
    """The family whose bottleneck, C3k or block ``block`` is (None for anything else)."""
    for block_class, family in _FAMILIES.items():
        if isinstance(block, (block_class, family.bottleneck, family.c3k)):
            return family
    return None


def _block_input_channels(block: nn.Module, family: _BlockFamily) -> int:
    for stem in family.stems:
        if stem in block._modules:
            return block._modules[stem].conv.in_channels
    if family.operator is None:  # a DCNv2 block is the operator itself
        return block.in_channels
    return block._modules[family.operator].channels


def _bottleneck(candidate: nn.Module):
    children = candidate._modules
    if set(children) != {"cv1", "cv2"}:
        return None, None
    cv1, cv2 = children["cv1"], children["cv2"]
    family = _FAMILIES.get(type(cv2))
    if family is None:
        return None, f"a Bottleneck-shaped block (cv1, cv2) with an unknown `{_short(cv2)}` child"
    if not isinstance(cv1, Conv) or not isinstance(candidate.__dict__.get("add"), bool):
        return None, "a Bottleneck-shaped block (cv1, cv2) without a Conv `cv1` or a boolean `add`"
    if cv1.conv.out_channels != _block_input_channels(cv2, family):
        return None, "a Bottleneck-shaped block whose cv1 and cv2 channels differ"
    return family.bottleneck, None


def _unknown_child(candidate: nn.Module, allowed: tuple[type, ...]) -> str | None:
    """The first child of ``m`` that is not one of ``allowed``, or 'no' when ``m`` is empty."""
    inner = candidate._modules["m"]
    if inner is None or not len(inner):
        return "no"
    for child in inner:
        if not isinstance(child, allowed):
            return f"an unknown `{_short(child)}`"
    return None


def _inner_family(candidate: nn.Module, kinds: tuple[str, ...]):
    """(family, None) when every block in ``candidate.m`` is one family's ``kinds`` ("bottleneck",
    "c3k"), else (None, what is wrong)."""
    allowed = tuple(getattr(family, kind) for family in _FAMILIES.values() for kind in kinds)
    unknown = _unknown_child(candidate, allowed)
    if unknown:
        return None, f"{unknown} child"
    families = {_family_of(child) for child in candidate._modules["m"]}
    if len(families) > 1:
        return None, "blocks of different operators"
    return families.pop(), None


def _csp(candidate: nn.Module):
    children = candidate._modules
    if set(children) == {"cv1", "cv2", "cv3", "m"}:  # C3 / C3k: cv3(cat(m(cv1(x)), cv2(x)))
        family, wrong = _inner_family(candidate, ("bottleneck",))
        if wrong or not isinstance(children["m"], nn.Sequential):
            return None, f"a C3k-shaped container (cv1, cv2, cv3, m) with {wrong or 'a non-Sequential child'}"
        if not all(isinstance(children[n], Conv) for n in ("cv1", "cv2", "cv3")):
            return None, "a C3k-shaped container whose cv1 / cv2 / cv3 are not Convs"
        return family.c3k, None
    if set(children) != {"cv1", "cv2", "m"}:
        return None, None
    # C2f / C3k2: cv2(cat(split(cv1(x), c) + [m_i(...)]))
    shape = "C3k2" if "C3k2" in _short(candidate) else "C2f"
    family, wrong = _inner_family(candidate, ("bottleneck", "c3k"))
    if wrong or not isinstance(children["m"], nn.ModuleList):
        return None, f"a {shape}-shaped container (cv1, cv2, m) with {wrong or 'a non-ModuleList child'}"
    c, n = candidate.__dict__.get("c"), len(children["m"])
    cv1, cv2 = children["cv1"], children["cv2"]
    if not (
        _is_int(c)
        and isinstance(cv1, Conv)
        and isinstance(cv2, Conv)
        and cv1.conv.out_channels == 2 * c
        and cv2.conv.in_channels == (2 + n) * c
    ):
        return None, f"a {shape}-shaped container whose cv1, cv2 and c do not fit {n} blocks"
    if shape == "C3k2" or any(isinstance(child, family.c3k) for child in children["m"]):
        return family.c3k2, None
    return family.c2f, None


_SHAPES = (
    _operator,
    _block,
    _dcnv4_operator,
    _dcnv4_block,
    _dcnv2_mpca,
    _dcnv2_offset_attention,
    _dcnv2,
    _bottleneck,
    _csp,
)


def _adopt(candidate: nn.Module) -> str | None:
    """Re-class ``candidate`` in place; None, or why it matches no layout."""
    if not candidate._modules and _short(candidate) in _STATELESS:
        target, reason = _stateless(candidate)
    else:
        target, reason = None, None
        for shape in _SHAPES:
            target, reason = shape(candidate)
            if target is not None or reason is not None:
                break
    if target is None:
        return reason or _holdings(candidate)
    candidate.__class__ = target
    return None


def _holdings(candidate: nn.Module) -> str:
    parts = []
    if candidate._modules:
        parts.append("children " + ", ".join(f"{n} ({_short(c)})" for n, c in candidate._modules.items()))
    if candidate._parameters:
        parts.append(
            "parameters "
            + ", ".join(f"{n} {tuple(p.shape)}" for n, p in candidate._parameters.items() if p is not None)
        )
    return "a module holding " + ("; ".join(parts) if parts else "no state") + ", in no known layout"


def _children(node: nn.Module) -> list[nn.Module]:
    children = node.__dict__.get("_modules")
    if not isinstance(children, dict):  # state from the file: check before walking it
        raise UnknownLayoutError(
            f"a {_short(node)} whose saved children are a {type(children).__name__}, not a module dictionary"
        )
    for name, child in children.items():
        if child is not None and not isinstance(child, nn.Module):
            raise UnknownLayoutError(f"a {_short(node)} whose child '{name}' is a {type(child).__name__}")
    return [child for child in children.values() if child is not None]


def _post_order(root: nn.Module):
    """Every module under ``root`` once, children before parents (iterative: no recursion limit)."""
    seen, order, stack = set(), [], [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(_children(node)))
    return order


def adopt_fork_modules(networks: list[nn.Module]) -> int:
    """Give every ForkModule in ``networks`` the class of ours that computes what the fork's did.

    Returns how many were adopted. Raises UnknownLayoutError naming each fork class that fits no
    known layout, with what it holds; the networks are then unusable (nothing has run).
    """
    adopted, unknown = 0, {}
    for network in networks:
        for candidate in _post_order(network):
            if not isinstance(candidate, ForkModule):
                continue
            reason = _adopt(candidate)
            if reason is None:
                adopted += 1
            else:
                unknown.setdefault(candidate.fork_class, reason)
    if unknown:
        needs = "; ".join(f"`{name.rsplit('.', 1)[-1]}` ({name}): {reason}" for name, reason in unknown.items())
        raise UnknownLayoutError(
            f"the checkpoint needs classes DeformLens does not know: {needs}. DeformLens knows "
            f"{KNOWN_LAYERS}, recognised by what they hold (see {DOCS_SECTION}); nothing "
            f"from the file was run"
        )
    return adopted
