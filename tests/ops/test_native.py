"""dcnv3.ops.native: the compiled CPU kernel builds, shares PyTorch's OpenMP, and falls back cleanly.

Its numerics are checked with every other formulation in test_ops.py (golden vectors, oracle,
dtypes) and end to end by the fork fixture in test_checkpoints.py.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fakes import random_case

from dcnv3.ops import native
from dcnv3.ops.core import dcnv3_core_native, dcnv3_core_sparse

NEEDS_COMPILER = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler on this machine"
)


def run_python(code: str, **env) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@NEEDS_COMPILER
def test_kernel_builds_and_loads():
    assert native.library() is not None, native.failure()
    assert native.failure() is None


@NEEDS_COMPILER
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_kernel_uses_the_openmp_runtime_pytorch_loaded():
    native.library()
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "libgomp" in line}
    # One runtime: a second one would start its own spinning thread pool beside PyTorch's.
    assert len(mapped) == 1, mapped


@NEEDS_COMPILER
def test_kernel_follows_torch_thread_count():
    """One thread or two: the same result (the work split never changes a sum's order)."""
    inputs, offset, mask, config = random_case(3, n=2, in_h=13, in_w=11, group=4, channels_per_group=16)
    inputs, offset, mask = (t.float().requires_grad_() for t in (inputs, offset, mask))
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, max(2, threads)):
            torch.set_num_threads(count)
            out = dcnv3_core_native(inputs, offset, mask, **config)
            grads = torch.autograd.grad(out.square().sum(), (inputs, offset, mask))
            results.append((out, *grads))
    finally:
        torch.set_num_threads(threads)
    for one, many in zip(*results):
        assert torch.equal(one, many)


@NEEDS_COMPILER
@pytest.mark.parametrize("channels_per_group", [16, 5])  # a specialised and the generic width
def test_only_the_requested_gradients(channels_per_group):
    inputs, offset, mask, config = random_case(4, channels_per_group=channels_per_group)
    offset.requires_grad_()
    out = dcnv3_core_native(inputs, offset, mask, **config)
    (grad_offset,) = torch.autograd.grad(out.sum(), offset)
    reference = dcnv3_core_sparse(inputs, offset, mask, **config)
    (expected,) = torch.autograd.grad(reference.sum(), offset)
    assert (grad_offset - expected).abs().max() < 1e-9


def test_disabled_kernel_falls_back_to_the_sparse_formulation(tmp_path):
    out = run_python(
        """
        import torch
        from dcnv3.ops import native
        from dcnv3 import dcnv3_core
        from dcnv3.ops.core import dcnv3_core_sparse
        x = torch.randn(1, 6, 6, 8)
        off = torch.randn(1, 6, 6, 2 * 9 * 2)
        mask = torch.softmax(torch.randn(1, 6, 6, 2, 9), -1).reshape(1, 6, 6, 18)
        args = dict(kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, pad_h=1, pad_w=1,
                    dilation_h=1, dilation_w=1, group=2, group_channels=4, offset_scale=1.0,
                    remove_center=0)
        assert torch.equal(dcnv3_core(x, off, mask, **args), dcnv3_core_sparse(x, off, mask, **args))
        print("library", native.library(), "|", native.failure())
    """,
        DEFORMLENS_NATIVE="0",
        DEFORMLENS_CACHE_DIR=str(tmp_path),
    )
    assert "library None | disabled by DEFORMLENS_NATIVE=0" in out
    assert not list(tmp_path.iterdir())  # nothing was built


def test_a_compiler_failure_is_reported_and_the_operator_still_runs(tmp_path):
    out = run_python(
        """
        import torch
        from dcnv3.ops import native
        from dcnv3 import dcnv3_core
        x = torch.randn(1, 5, 5, 4)
        off = torch.zeros(1, 5, 5, 18)
        mask = torch.full((1, 5, 5, 9), 1 / 9)
        out = dcnv3_core(x, off, mask, 3, 3, 1, 1, 1, 1, 1, 1, 1, 4, 1.0, 0)
        box = torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), 3, 1, 1,
                                             count_include_pad=True).permute(0, 2, 3, 1)
        assert (out - box).abs().max() < 1e-5
        print("failure:", native.failure())
    """,
        CXX="/bin/false",
        DEFORMLENS_CACHE_DIR=str(tmp_path),
    )
    assert "failure: /bin/false failed" in out
    assert not list(tmp_path.iterdir())  # the partial output was removed


@NEEDS_COMPILER
def test_the_build_is_cached_per_source(tmp_path):
    code = """
        from dcnv3.ops import native
        assert native.library() is not None, native.failure()
        print(sorted(p.name for p in native.cache_dir().iterdir()))
    """
    first = run_python(code, DEFORMLENS_CACHE_DIR=str(tmp_path))
    second = run_python(code, DEFORMLENS_CACHE_DIR=str(tmp_path))
    assert first == second and first.count(".so") == 1


@NEEDS_COMPILER
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inference_softmax_over_points_equals_torch(dtype):
    from dcnv3.ops.dcnv3 import softmax_over_points

    logits = 20 * torch.randn(2, 5, 7, 3 * 9, dtype=dtype)  # large logits: the max is subtracted
    expected = torch.softmax(logits.reshape(-1, 9), -1).reshape(logits.shape)
    with torch.inference_mode():
        weights = softmax_over_points(logits, 9)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    assert (weights - expected).abs().max() < tolerance
    assert native.softmax_rows(logits, 9) is not None  # the kernel's path, not the fallback
