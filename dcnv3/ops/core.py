"""The DCNv3 core operator: InternImage's numerics, any device, exportable, fast on the CPU.

Why one module (over 400 lines): the four formulations of one operator share validation, geometry
and the bilinear taps, and must stay in step; they are checked side by side against one another.

Layout conventions (identical to InternImage's ``dcnv3_core_pytorch``):

* ``input``  (N, H_in, W_in, G*D) channels-last; the channels of group g are ``[g*D, (g+1)*D)``.
* ``offset`` (N, H_out, W_out, G*P*2); channel ``g*2P + 2p`` is dx (width), ``+1`` is dy (height).
* ``mask``   (N, H_out, W_out, G*P); already normalised over the P points of each group.
* point ``p = i*K_h + j``: the outer index i walks the kernel's x (columns), j its y (rows).
  With ``remove_center`` the centre point is dropped and later points shift down by one.

Sampling location of point (i, j), group g, output cell (h, w), in unpadded input pixel indices
(pixel centres at integers), with ``c = (dilation*(K-1))//2``::

    x = w*stride_w - pad_w + c_w + offset_scale * (i*dilation_w - c_w + dx)
    y = h*stride_h - pad_h + c_h + offset_scale * (j*dilation_h - c_h + dy)

Four formulations compute the same thing (``set_default_formulation``):

* ``"native"`` (default): the compiled CPU kernel of ``dcnv3/ops/native`` (built with g++ on first
  use), one parallel pass over the samples for the forward and one for all three gradients.
  Off the CPU, or where no compiler can build it, it hands over to ``"sparse"``.
* ``"sparse"`` (the default off the CPU): sampling is linear in the input, so each of the four
  bilinear taps is a sparse (outputs x input pixels) CSR matrix of tap weight x mask, applied to
  the NHWC input viewed as an (N*H*W*G, D) table (a group's D channels are contiguous). The
  sampled values are never materialised; a hand-written backward uses ``sampled_addmm`` for
  the offset and mask gradients and the transposed matrices for the input gradient.
* ``"gather"``: the same taps as ``index_select`` of table rows and a batched matmul, in plain
  differentiable ops: the path for tracing, ONNX export and devices without sparse kernels.
* ``"grid_sample"``: the reference's formulation (one ``F.grid_sample`` per group on NCHW).

All four form sampling locations with the reference's own arithmetic (normalised coordinates,
grid_sample's unnormalisation), compute in at least float32 and return the input's dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from dcnv3.ops import native

__all__ = [
    "dcnv3_core",
    "dcnv3_core_grid_sample",
    "dcnv3_core_gather",
    "dcnv3_core_sparse",
    "dcnv3_core_native",
    "output_size",
    "square_geometry",
    "set_default_formulation",
    "default_formulation",
    "formulation",
    "FORMULATIONS",
]


class Geometry(NamedTuple):
    """The static arguments of the core, in the reference's order."""

    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dilation_h: int
    dilation_w: int
    group: int
    group_channels: int
    offset_scale: float
    remove_center: int

    @property
    def points(self) -> int:
        """P, the number of sampling points per group."""
        return self.kernel_h * self.kernel_w - int(self.remove_center)


def output_size(
    in_h: int,
    in_w: int,
    kernel_h: int,
    kernel_w: int,
    stride_h: int,
    stride_w: int,
    pad_h: int,
    pad_w: int,
    dilation_h: int,
    dilation_w: int,
) -> tuple[int, int]:
    """(H_out, W_out) of a convolution with this geometry, as the reference computes it."""
    out_h = (in_h + 2 * pad_h - (dilation_h * (kernel_h - 1) + 1)) // stride_h + 1
    out_w = (in_w + 2 * pad_w - (dilation_w * (kernel_w - 1) + 1)) // stride_w + 1
    return out_h, out_w


def square_geometry(kernel_size: int, stride: int, pad: int, dilation: int) -> tuple[int, ...]:
    """The eight geometry arguments of ``output_size`` and the cores (kernel_h, kernel_w, stride_h,
    stride_w, pad_h, pad_w, dilation_h, dilation_w) of a square geometry, as the modules have it."""
    return kernel_size, kernel_size, stride, stride, pad, pad, dilation, dilation


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Sampling geometry in half precision would round locations to ~1/1000 of the image size.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _validate(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: Geometry) -> None:
    """Raise a ValueError that says what is wrong with the shapes, before anything is computed."""
    if input.dim() != 4:
        raise ValueError(f"DCNv3 expects a channels-last input (N, H, W, C); got {tuple(input.shape)}")
    if geo.remove_center and (geo.kernel_h % 2 == 0 or geo.kernel_w % 2 == 0):
        raise ValueError(f"remove_center needs an odd kernel, got {geo.kernel_h}x{geo.kernel_w}")
    n, in_h, in_w, channels = input.shape
    expected_c = geo.group * geo.group_channels
    if channels != expected_c:
        raise ValueError(
            f"DCNv3 input has {channels} channels in its last dimension but group*group_channels = "
            f"{geo.group}*{geo.group_channels} = {expected_c}. DCNv3 takes channels-last (N, H, W, C) "
            f"tensors; an NCHW tensor (N, C, H, W) shows its width here. Got shape {tuple(input.shape)}."
        )
    out_h, out_w = output_size(
        in_h,
        in_w,
        geo.kernel_h,
        geo.kernel_w,
        geo.stride_h,
        geo.stride_w,
        geo.pad_h,
        geo.pad_w,
        geo.dilation_h,
        geo.dilation_w,
    )
    p = geo.points
    for name, tensor, per_group in (("offset", offset, 2 * p), ("mask", mask, p)):
        want = (n, out_h, out_w, geo.group * per_group)
        if tuple(tensor.shape) != want:
            raise ValueError(
                f"DCNv3 {name} has shape {tuple(tensor.shape)}, expected {want}: (N, H_out, W_out, "
                f"group*{per_group}) for kernel {geo.kernel_h}x{geo.kernel_w}, group {geo.group}, "
                f"P={p} points, stride ({geo.stride_h}, {geo.stride_w}), pad ({geo.pad_h}, {geo.pad_w}),"
                f" dilation ({geo.dilation_h}, {geo.dilation_w}) on a {in_h}x{in_w} input"
            )


def _prepare(input, offset, mask, geometry: tuple) -> tuple:
    """Validate a core call and bring its tensors to the compute dtype, contiguous.

    ``geometry``: the reference's twelve static arguments, in its order (``Geometry``'s fields).
    Returns ``(geo, (input, offset, mask))``: the ``Geometry`` and the three tensors in float64
    for float64 inputs, else float32 (every formulation returns the input's dtype).
    """
    geo = Geometry(*geometry[:10], float(geometry[10]), int(geometry[11]))
    _validate(input, offset, mask, geo)
    compute = _compute_dtype(input.dtype)
    return geo, tuple(t.to(compute).contiguous() for t in (input, offset, mask))


def _with_reference_signature(run, summary: str):
    """The public function of one formulation: InternImage's 15-argument ``dcnv3_core_pytorch``
    signature around ``run(input, offset, mask, geo)``, which receives validated tensors in the
    compute dtype and whose result is returned in the input's dtype."""

    def core(
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
    ):
        geo, tensors = _prepare(
            input,
            offset,
            mask,
            (
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
            ),
        )
        return run(*tensors, geo).to(input.dtype)

    core.__name__ = core.__qualname__ = f"dcnv3_core_{run.__name__.removeprefix('_run_')}"
    core.__doc__ = f"DCNv3 core through {summary}. Same contract as ``dcnv3_core``."
    return core


# ---------------------------------------------------------------------------------------------
# Formulation 1: grid_sample, as the reference does it.
# ---------------------------------------------------------------------------------------------
def _grid_sample_forward(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: Geometry) -> torch.Tensor:
    n, in_h, in_w, _ = input.shape
    _, out_h, out_w, _ = offset.shape
    g, d, p = geo.group, geo.group_channels, geo.points
    base, size, _ = _location_grid(geo, n, out_h, out_w, in_h, in_w, offset.dtype, offset.device)
    learned = offset.view(n, out_h, out_w, g, p, 2).permute(5, 0, 1, 2, 3, 4)
    # Normalised locations of the zero-padded input, exactly as the reference forms them.
    loc = base + learned * geo.offset_scale / size  # (2, N, Ho, Wo, G, P)
    grid = (2 * loc - 1).permute(1, 4, 2, 3, 5, 0).reshape(n * g, out_h * out_w, p, 2)
    padded = F.pad(input, (0, 0, geo.pad_w, geo.pad_w, geo.pad_h, geo.pad_h))
    value = padded.reshape(n, -1, g * d).transpose(1, 2).reshape(n * g, d, *padded.shape[1:3])
    sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    weights = mask.reshape(n, out_h * out_w, g, p).transpose(1, 2).reshape(n * g, 1, out_h * out_w, p)
    out = (sampled * weights).sum(-1).view(n, g * d, out_h * out_w)
    return out.transpose(1, 2).reshape(n, out_h, out_w, g * d)


def _run_grid_sample(input, offset, mask, geo: Geometry) -> torch.Tensor:
    return _grid_sample_forward(input, offset, mask, geo)


dcnv3_core_grid_sample = _with_reference_signature(_run_grid_sample, "``F.grid_sample`` (autograd by PyTorch)")


# ---------------------------------------------------------------------------------------------
# Bilinear taps shared by the gather and sparse formulations.
# ---------------------------------------------------------------------------------------------
class _Taps(NamedTuple):
    """The four bilinear taps of every sample, on a zero-padded value table.

    The table is the input zero-padded by one pixel on the top/left and two on the bottom/right,
    (N, H+3, W+3, G*D), viewed as (N*(H+3)*(W+3)*G, D): a group's D channels form one row.
    Sampling locations are clamped to [-1, W] x [-1, H], so every tap lands in the table and a
    tap outside the image reads a zero, as the reference's zero padding does.

    Elementwise work runs on "planar" tensors (small leading axes, then M x P contiguous), which
    PyTorch's CPU kernels vectorise well. Shapes, with M = N*Ho*Wo*G output rows:
      ``row``      (M, P) int64: table row of each sample's top-left tap (y0, x0).
      ``linear``   (2, 2, M, P): [coordinate x|y, tap 0|1] 1-D interpolation weights.
      ``bilinear`` (2, 2, M, P): [ty, tx] bilinear weights = linear[y, ty] * linear[x, tx].
      ``inside``   (2, M, P) or None: 1 where the clamp left the coordinate alone.
      ``shifts``:  table-row distance of taps (y0,x0), (y0,x1), (y1,x0), (y1,x1) from the first.
    """

    row: torch.Tensor
    linear: torch.Tensor
    bilinear: torch.Tensor
    inside: torch.Tensor | None
    shifts: tuple


@functools.lru_cache(maxsize=64)
def _base_planes(
    geo: Geometry, out_h: int, out_w: int, in_h: int, in_w: int, dtype: torch.dtype, device: torch.device
) -> tuple:
    """Offset-free sampling locations in InternImage's normalised coordinates.

    Returns ``(x, y)``: x (W_out, P) and y (H_out, P), in padded-input pixels / padded size,
    computed with the reference's operations in the reference's order, so float32 rounding
    matches it. x does not depend on the row, y not on the column.
    """
    size_w, size_h = in_w + 2 * geo.pad_w, in_h + 2 * geo.pad_h
    c_h = (geo.dilation_h * (geo.kernel_h - 1)) // 2
    c_w = (geo.dilation_w * (geo.kernel_w - 1)) // 2
    options = dict(dtype=dtype, device=device)
    ref_x = torch.linspace(c_w + 0.5, c_w + 0.5 + (out_w - 1) * geo.stride_w, out_w, **options) / size_w
    ref_y = torch.linspace(c_h + 0.5, c_h + 0.5 + (out_h - 1) * geo.stride_h, out_h, **options) / size_h
    kernel_x = torch.linspace(-c_w, -c_w + (geo.kernel_w - 1) * geo.dilation_w, geo.kernel_w, **options) / size_w
    kernel_y = torch.linspace(-c_h, -c_h + (geo.kernel_h - 1) * geo.dilation_h, geo.kernel_h, **options) / size_h
    # Point p = i*K_h + j takes kernel_x[i] and kernel_y[j] (column-major, as the reference).
    grid_x = kernel_x.view(-1, 1).expand(geo.kernel_w, geo.kernel_h).reshape(-1)
    grid_y = kernel_y.view(1, -1).expand(geo.kernel_w, geo.kernel_h).reshape(-1)
    if geo.remove_center:
        keep = [q for q in range(geo.kernel_h * geo.kernel_w) if q != (geo.kernel_h * geo.kernel_w - 1) // 2]
        grid_x, grid_y = grid_x[keep], grid_y[keep]
    x = ref_x.view(out_w, 1) + grid_x.view(1, -1) * geo.offset_scale
    y = ref_y.view(out_h, 1) + grid_y.view(1, -1) * geo.offset_scale
    return x.contiguous(), y.contiguous()


@functools.lru_cache(maxsize=64)
def _location_grid(
    geo: Geometry, n: int, out_h: int, out_w: int, in_h: int, in_w: int, dtype: torch.dtype, device: torch.device
) -> tuple:
    """Offset-free sampling locations and the constants that turn them into pixels.

    Returns ``(base, size, pad)``: ``base`` (2, N, Ho, Wo, G, P) holds the x and y planes of
    ``_base_planes``; ``size`` and ``pad`` are (2, 1, 1, 1, 1, 1) tensors of the padded sizes
    (W_pad, H_pad) and the pads.
    """
    x, y = _base_planes(geo, out_h, out_w, in_h, in_w, dtype, device)
    base = torch.stack(torch.broadcast_tensors(x.unsqueeze(0), y.unsqueeze(1)))  # (2, Ho, Wo, P)
    shape = (2, n, out_h, out_w, geo.group, geo.points)
    base = base.unsqueeze(1).unsqueeze(4).expand(shape).contiguous()
    options = dict(dtype=dtype, device=device)
    size = torch.tensor([in_w + 2 * geo.pad_w, in_h + 2 * geo.pad_h], **options).view(2, 1, 1, 1, 1, 1)
    pad = torch.tensor([geo.pad_w, geo.pad_h], **options).view(2, 1, 1, 1, 1, 1)
    return base, size, pad


@functools.lru_cache(maxsize=64)
def _row_base(n: int, group: int, image_rows: int, first: int, device: torch.device) -> torch.Tensor:
    """(N, 1, 1, G, 1) int64: table row of (n, g) at padded pixel (0, 0), plus ``first``."""
    return (
        torch.arange(n, dtype=torch.int64, device=device).view(n, 1, 1, 1, 1) * image_rows
        + torch.arange(group, dtype=torch.int64, device=device).view(1, 1, 1, group, 1)
        + first
    )


def _padded_table(input: torch.Tensor, group: int) -> torch.Tensor:
    """(N, H, W, G*D) -> the (N*(H+3)*(W+3)*G, D) value table of ``_Taps``."""
    n, in_h, in_w, channels = input.shape
    return F.pad(input, (0, 0, 1, 2, 1, 2)).reshape(n * (in_h + 3) * (in_w + 3) * group, channels // group)


def _bilinear_taps(offset: torch.Tensor, geo: Geometry, in_h: int, in_w: int, need_inside: bool = False) -> _Taps:
    """Taps of the samples that ``offset`` (N, Ho, Wo, G*P*2) places on an (N, in_h, in_w) input."""
    n, out_h, out_w, _ = offset.shape
    g, p = geo.group, geo.points
    m = n * out_h * out_w * g
    base, size, pad = _location_grid(geo, n, out_h, out_w, in_h, in_w, offset.dtype, offset.device)
    learned = offset.view(n, out_h, out_w, g, p, 2).permute(5, 0, 1, 2, 3, 4)
    # The reference's arithmetic: normalised location = base + offset*scale/size, grid_sample
    # coordinate 2*loc - 1, and grid_sample's unnormalisation (g + 1) * size/2 - 0.5 into
    # padded pixels; minus the pad (exact) gives input pixels. Same rounding as InternImage.
    high = size - 2 * pad  # (W, H): samples are clamped to [-1, W] x [-1, H]
    if _exporting() or (torch.is_grad_enabled() and offset.requires_grad):
        # Out-of-place ops: the gather formulation's autograd, and what tracers can export.
        loc = base + learned * geo.offset_scale / size
        loc = ((2 * loc - 1) + 1) * (size / 2) - 0.5 - pad
        loc = torch.minimum(loc.clamp_min(-1.0), high)
        inside = None
    else:  # in place on a planar buffer: the de-interleaving copy is the only strided pass
        loc = torch.empty_like(base).copy_(learned)
        if geo.offset_scale != 1:
            loc.mul_(geo.offset_scale)
        loc.div_(size).add_(base).mul_(2).sub_(1).add_(1).mul_(size / 2).sub_(0.5).sub_(pad)
        raw = loc.clone() if need_inside else None
        loc[0].clamp_(-1.0, in_w)
        loc[1].clamp_(-1.0, in_h)
        inside = (loc == raw).to(loc.dtype).view(2, m, p) if need_inside else None
    top_left = torch.floor(loc)
    # Interpolation weights as grid_sample forms them: (x0 + 1) - x and x - x0.
    linear = torch.stack(((top_left + 1) - loc, loc - top_left), dim=1).view(2, 2, m, p)
    bilinear = linear[1].unsqueeze(1) * linear[0].unsqueeze(0)  # [ty, tx]
    # Padded-table row of the top-left tap: ((n*(H+3) + y0+1)*(W+3) + x0+1)*G + g.
    stride_y, stride_x = (in_w + 3) * g, g
    corner = top_left.to(torch.int64)
    row = (
        corner[0]
        .mul_(stride_x)
        .add_(corner[1].mul_(stride_y))
        .add_(_row_base(n, g, (in_h + 3) * stride_y, stride_y + stride_x, offset.device))
        .view(m, p)
    )
    shifts = (0, stride_x, stride_y, stride_y + stride_x)
    return _Taps(row, linear, bilinear, inside, shifts)


# ---------------------------------------------------------------------------------------------
# Formulation 2: gather of the four bilinear taps on the NHWC layout.
# ---------------------------------------------------------------------------------------------
def _gather_forward(input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """Gather formulation in plain differentiable torch ops: the export and fallback path.

    All 4*P taps of an output row are gathered from the value table at once (a group's D
    channels are contiguous in NHWC) and summed with weights bilinear x mask by a batched matmul.
    Peak memory is the (M, 4P, D) gathered tensor, four times the reference's sampled values.
    """
    n, in_h, in_w, _ = input.shape
    _, out_h, out_w, _ = offset.shape
    g, d, p = geo.group, geo.group_channels, geo.points
    taps = _bilinear_taps(offset, geo, in_h, in_w)
    m = n * out_h * out_w * g
    shifts = torch.tensor(taps.shifts, dtype=torch.int64, device=input.device).view(1, 4, 1)
    cols = taps.row.long().unsqueeze(1) + shifts  # (M, 4, P)
    values = _padded_table(input, g).index_select(0, cols.view(-1)).view(m, 4 * p, d)
    weights = (taps.bilinear.view(4, m, p) * mask.reshape(1, m, p)).transpose(0, 1).reshape(m, 1, 4 * p)
    return torch.bmm(weights, values).view(n, out_h, out_w, g * d)


def _run_gather(input, offset, mask, geo: Geometry) -> torch.Tensor:
    return _gather_forward(input, offset, mask, geo)


dcnv3_core_gather = _with_reference_signature(_run_gather, "index_select + bmm (autograd by PyTorch)")


# ---------------------------------------------------------------------------------------------
# Formulation 3 (default): a sparse sampling matrix times the value table.
# ---------------------------------------------------------------------------------------------
_RADIX_SORT_MIN = 32768


def _argsort_indices(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """argsort of non-negative int keys < ``bound``.

    PyTorch's CPU sort switches to a parallel radix sort from 32768 elements and is an order of
    magnitude slower just below; shorter inputs are padded with ``bound`` (sorts last) to get it.
    """
    count = keys.numel()
    if keys.device.type == "cpu" and count < _RADIX_SORT_MIN:
        keys = torch.cat([keys, keys.new_full((_RADIX_SORT_MIN - count,), bound)])
        return torch.argsort(keys)[:count]
    return torch.argsort(keys)


class _SparseFunction(torch.autograd.Function):
    """DCNv3 core as sparse x dense products, with a hand-written backward.

    Sampling is linear in the values: out = sum_t A_t @ table[shift_t:], where A_t is an
    (M = N*Ho*Wo*G) x (table rows) CSR matrix holding tap t's bilinear weight x mask at the
    top-left tap's row for each of the P points of output row r. The four taps of a sample sit
    at fixed row shifts from its top-left tap, so all four A_t share one sparsity pattern and
    read shifted views of one table. The products never materialise the (M, P, D) sampled
    values; the forward keeps only the (4, M, P) tap weights and the pattern for the backward.

    Backward: <grad_out, tap value> at every nonzero (``sampled_addmm``) gives the mask and
    location gradients; A_t^T @ grad_out gives the input gradient, with A^T's pattern built
    from one sort of the (M, P) top-left rows.
    """

    @staticmethod
    def _matrices(taps: _Taps, weights: torch.Tensor, span: int) -> list:
        m, p = taps.row.shape
        crow = torch.arange(0, m * p + 1, p, dtype=torch.int64, device=weights.device)
        cols = taps.row.view(-1)
        # PyTorch warns (once per process) that CSR is "beta" and that invariant checks are off;
        # both are expected here (the indices are built in range). Silenced for this call only:
        # a library must not change the process' warning filters.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
            return [
                torch.sparse_csr_tensor(crow, cols, w.view(-1), size=(m, span), check_invariants=False) for w in weights
            ]

    @staticmethod
    def forward(ctx, input, offset, mask, geo):
        n, in_h, in_w, _ = input.shape
        _, out_h, out_w, _ = offset.shape
        g, d, p = geo.group, geo.group_channels, geo.points
        taps = _bilinear_taps(offset, geo, in_h, in_w, need_inside=offset.requires_grad)
        table = _padded_table(input, g)
        m = n * out_h * out_w * g
        span = table.shape[0] - taps.shifts[-1]  # rows a top-left tap can address
        weights = taps.bilinear.view(4, m, p) * mask.reshape(1, m, p)  # (4, M, P)
        out = None
        for matrix, shift in zip(_SparseFunction._matrices(taps, weights, span), taps.shifts):
            term = matrix @ table[shift : shift + span]
            out = term if out is None else out.add_(term)
        ctx.geo, ctx.taps, ctx.weights = geo, taps, weights
        ctx.save_for_backward(input, mask)
        return out.view(n, out_h, out_w, g * d)

    @staticmethod
    def backward(ctx, grad_out):
        input, mask = ctx.saved_tensors
        # The taps stay on ctx (freed with the graph): a second backward (retain_graph=True,
        # gradcheck) needs them again.
        geo, taps, weights = ctx.geo, ctx.taps, ctx.weights
        n, in_h, in_w, channels = input.shape
        g, p = geo.group, geo.points
        m = taps.row.shape[0]
        table = _padded_table(input, g)
        span = table.shape[0] - taps.shifts[-1]
        views = [table[shift : shift + span] for shift in taps.shifts]
        go = grad_out.reshape(m, geo.group_channels).contiguous()
        need_input, need_offset, need_mask = ctx.needs_input_grad[:3]
        grad_input = grad_offset = grad_mask = None
        if need_offset or need_mask:
            # <grad_out[r], value at the tap> for every nonzero: d loss / d (bilinear x mask).
            # Taps outside the image read zeros, so their dots are 0.
            matrices = _SparseFunction._matrices(taps, weights, span)
            dots = torch.stack(
                [torch.sparse.sampled_addmm(a, go, v.t(), beta=0.0).values() for a, v in zip(matrices, views)]
            ).view(2, 2, m, p)  # (ty, tx)
            if need_mask:
                grad_mask = (dots * taps.bilinear).sum((0, 1)).view_as(mask)
            if need_offset:
                # d bilinear[ty, tx] / dx = linear[y, ty] * (-1 at tx=0, +1 at tx=1); same for y.
                grad_x = (taps.linear[1] * (dots[:, 1] - dots[:, 0])).sum(0)
                grad_y = (taps.linear[0] * (dots[1] - dots[0])).sum(0)
                grad_loc = torch.stack((grad_x, grad_y)).mul_(taps.inside)
                grad_loc.mul_(mask.reshape(1, m, p) * geo.offset_scale)
                grad_offset = grad_loc.permute(1, 2, 0).reshape(grad_out.shape[:3] + (g * p * 2,))
        if need_input:
            rows = taps.row.view(-1)
            order = _argsort_indices(rows, span)
            crow = torch.zeros(span + 1, dtype=torch.int64, device=rows.device)
            torch.cumsum(torch.bincount(rows, minlength=span), 0, out=crow[1:])
            out_rows = torch.div(order, p, rounding_mode="floor")
            grad_table = torch.zeros_like(table)
            for tap_weights, shift in zip(weights.view(4, m * p), taps.shifts):
                transposed = torch.sparse_csr_tensor(
                    crow, out_rows, tap_weights.index_select(0, order), size=(span, m), check_invariants=False
                )
                grad_table[shift : shift + span] += transposed @ go
            grad_input = grad_table.view(n, in_h + 3, in_w + 3, channels)[:, 1:-2, 1:-2]
        return grad_input, grad_offset, grad_mask, None


def _sparse_supported(device: torch.device) -> bool:
    # CSR products and sampled_addmm exist on CPU (MKL) and CUDA (cuSPARSE); elsewhere, gather.
    return device.type in ("cpu", "cuda")


def _run_sparse(input, offset, mask, geo: Geometry) -> torch.Tensor:
    # ONNX has no sparse products, and some devices have no sparse CSR kernels: gather there.
    if _exporting() or not _sparse_supported(input.device):
        return _gather_forward(input, offset, mask, geo)
    return _SparseFunction.apply(input, offset, mask, geo)


dcnv3_core_sparse = _with_reference_signature(
    _run_sparse,
    "sparse tap matrices (the gather formulation while tracing or exporting, and on "
    "devices without sparse CSR kernels)",
)


# ---------------------------------------------------------------------------------------------
# Formulation 4 (default on CPU): the compiled kernel of dcnv3/native.
# ---------------------------------------------------------------------------------------------
class _NativeFunction(torch.autograd.Function):
    """DCNv3 core through ``dcnv3/ops/native/dcnv3_cpu.cpp``: one pass over the samples each way.

    The forward keeps only its inputs; the backward recomputes each sample's location and taps
    (cheaper than storing four weights and four indices per sample) and forms all three gradients
    in that one pass. Inputs are contiguous CPU float32 or float64 tensors.
    """

    @staticmethod
    def _call(name, tensors, geo, in_h, in_w, out_h, out_w):
        x, y = _base_planes(geo, out_h, out_w, in_h, in_w, tensors[0].dtype, tensors[0].device)
        shape = native.Dcnv3Shape(
            tensors[0].shape[0],
            in_h,
            in_w,
            out_h,
            out_w,
            geo.group,
            geo.group_channels,
            geo.points,
            geo.offset_scale,
            in_w + 2 * geo.pad_w,
            in_h + 2 * geo.pad_h,
            geo.pad_w,
            geo.pad_h,
        )
        suffix = "f64" if tensors[0].dtype == torch.float64 else "f32"
        pointers = [t.data_ptr() if t is not None else None for t in tensors]
        status = getattr(native.library(), f"dcnv3_{name}_{suffix}")(
            *pointers[:3], x.data_ptr(), y.data_ptr(), *pointers[3:], ctypes.byref(shape)
        )
        if status != 0:
            raise ValueError(f"the native DCNv3 kernel cannot take group_channels={geo.group_channels}")

    @staticmethod
    def forward(ctx, input, offset, mask, geo):
        n, in_h, in_w, channels = input.shape
        _, out_h, out_w, _ = offset.shape
        out = input.new_empty(n, out_h, out_w, channels)
        _NativeFunction._call("forward", (input, offset, mask, out), geo, in_h, in_w, out_h, out_w)
        ctx.geo = geo
        ctx.save_for_backward(input, offset, mask)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        input, offset, mask = ctx.saved_tensors
        _, in_h, in_w, _ = input.shape
        _, out_h, out_w, _ = offset.shape
        need_input, need_offset, need_mask = ctx.needs_input_grad[:3]
        grad_input = torch.zeros_like(input) if need_input else None
        # The kernel forms the offset and mask gradients together (they share the tap dots).
        both = need_offset or need_mask
        grad_offset = torch.empty_like(offset) if both else None
        grad_mask = torch.empty_like(mask) if both else None
        _NativeFunction._call(
            "backward",
            (input, offset, mask, grad_out.contiguous(), grad_input, grad_offset, grad_mask),
            ctx.geo,
            in_h,
            in_w,
            out_h,
            out_w,
        )
        return (grad_input, grad_offset if need_offset else None, grad_mask if need_mask else None, None)


def _run_native(input, offset, mask, geo: Geometry) -> torch.Tensor:
    # The sparse formulation off the CPU and where the kernel cannot be built (no C++ compiler;
    # ``dcnv3.ops.native.failure()`` says why), which hands over to gather while tracing or exporting.
    if (
        input.device.type != "cpu"
        or _exporting()
        or native.library() is None
        or geo.group_channels > native.MAX_GROUP_CHANNELS
        or input[0].numel() >= 2**31
    ):  # the kernel's offsets are int32
        return _run_sparse(input, offset, mask, geo)
    return _NativeFunction.apply(input, offset, mask, geo)


dcnv3_core_native = _with_reference_signature(
    _run_native,
    "the compiled CPU kernel (the sparse formulation off the CPU and without a C++ "
    "compiler, gather while tracing or exporting)",
)


def _exporting() -> bool:
    """True under torch.onnx.export, torch.jit.trace, torch.export and torch.compile."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or exporting or torch.compiler.is_compiling()


FORMULATIONS = {
    "native": dcnv3_core_native,
    "sparse": dcnv3_core_sparse,
    "gather": dcnv3_core_gather,
    "grid_sample": dcnv3_core_grid_sample,
}
_RUNNERS = {"native": _run_native, "sparse": _run_sparse, "gather": _run_gather, "grid_sample": _run_grid_sample}
# The process default (``set_default_formulation``) and the choice of the innermost ``with
# formulation(name):`` block of this thread or asyncio task (a context variable: a block in one gradio
# worker thread leaves every other thread on the process default). Unset: the process default.
_process_default = "native"
_block_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("dcnv3_formulation", default=None)


def _checked(name: str) -> str:
    if name not in FORMULATIONS:
        raise ValueError(f"unknown DCNv3 formulation {name!r}; choose from {sorted(FORMULATIONS)}")
    return name


def set_default_formulation(name: str) -> str:
    """Choose the formulation ``dcnv3_core`` uses, process-wide; returns the previous process default.

    ``"native"`` (default; the sparse formulation where the kernel is unavailable), ``"sparse"``,
    ``"gather"`` or ``"grid_sample"``. To change it for a block of code only, use
    ``with formulation(name):``, whose choice holds in its own thread (or asyncio task) only and
    takes precedence there over the process default.
    """
    global _process_default
    previous, _process_default = _process_default, _checked(name)
    return previous


def default_formulation() -> str:
    """The formulation ``dcnv3_core`` uses now, here: the innermost ``with formulation(name):``
    block's choice of this thread or task, else the process default."""
    chosen = _block_choice.get()
    return _process_default if chosen is None else chosen


@contextlib.contextmanager
def formulation(name: str):
    """Context manager: ``dcnv3_core`` uses ``name`` inside the block, and the previous
    formulation again after it (also on an exception), like timm's ``set_layer_config``.

    The choice is local to the current thread (or asyncio task, a ``contextvars`` context): other
    threads, e.g. the app's other gradio workers, keep the process default meanwhile."""
    token = _block_choice.set(_checked(name))
    try:
        yield
    finally:
        _block_choice.reset(token)


def dcnv3_core(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
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
) -> torch.Tensor:
    """DCNv3 core: InternImage's ``dcnv3_core_pytorch`` signature and numerics, with autograd.

    Args:
        input: (N, H_in, W_in, group*group_channels), channels-last.
        offset: (N, H_out, W_out, group*P*2), (dx, dy) per point, in input pixels before
            ``offset_scale``. The output size is taken from here and must equal the convolution
            output size of the geometry.
        mask: (N, H_out, W_out, group*P), the per-group normalised modulation weights.
        remaining arguments: the convolution geometry, as in the reference.

    Returns:
        (N, H_out, W_out, group*group_channels) in ``input``'s dtype; the sampling itself runs in
        float64 for float64 inputs and in float32 otherwise.
    """
    geo, tensors = _prepare(
        input,
        offset,
        mask,
        (
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
        ),
    )
    return _RUNNERS[default_formulation()](*tensors, geo).to(input.dtype)
