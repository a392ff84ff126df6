"""A plain, obviously-correct DCNv3 core written straight from docs/spec.md: the tests' oracle.

Loops over groups, kernel points and the four bilinear taps; every tap is read with explicit
bounds checks. Slow, differentiable by autograd, and independent of dcnv3/ops/core.py.
"""

import torch


def dcnv3_core_oracle(
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
    n, in_h, in_w, _ = input.shape
    _, out_h, out_w, _ = offset.shape
    c_h = (dilation_h * (kernel_h - 1)) // 2
    c_w = (dilation_w * (kernel_w - 1)) // 2
    points = [(i, j) for i in range(kernel_w) for j in range(kernel_h)]  # p = i*K_h + j
    if remove_center:
        del points[(kernel_h * kernel_w - 1) // 2]
    num_points = len(points)
    hs = torch.arange(out_h, dtype=input.dtype).view(1, out_h, 1)
    ws = torch.arange(out_w, dtype=input.dtype).view(1, 1, out_w)
    batch = torch.arange(n).view(n, 1, 1)
    out = []
    for g in range(group):
        channels = slice(g * group_channels, (g + 1) * group_channels)
        acc = 0
        for p, (i, j) in enumerate(points):
            dx = offset[..., g * 2 * num_points + 2 * p]
            dy = offset[..., g * 2 * num_points + 2 * p + 1]
            x = ws * stride_w - pad_w + c_w + offset_scale * (i * dilation_w - c_w + dx)
            y = hs * stride_h - pad_h + c_h + offset_scale * (j * dilation_h - c_h + dy)
            x0, y0 = torch.floor(x), torch.floor(y)
            sample = 0
            for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                    inside = (xx >= 0) & (xx <= in_w - 1) & (yy >= 0) & (yy <= in_h - 1)
                    xi = xx.clamp(0, in_w - 1).long()
                    yi = yy.clamp(0, in_h - 1).long()
                    value = input[batch, yi, xi][..., channels]  # (N, Ho, Wo, D)
                    sample = sample + (wy * wx * inside)[..., None] * value
            acc = acc + mask[..., g * num_points + p][..., None] * sample
        out.append(acc)
    return torch.cat(out, dim=-1)
