"""CUDA conv2d backward without a GPU: the .cu kernels and their launch plans run on the CPU
through test_cuda_emulator.py's host emulation, against the float64 loop reference.

(Every .cu file, these included, is compile-checked with nvcc and NVRTC by test_cuda.py; with
a GPU the shared suite test_conv2d_backward.py runs on the device itself, cuDNN included.)
"""
from __future__ import annotations

import numpy as np
import pytest

from reference import conv2d_backward_ref
from strategies import values
from cuda_sources import CU_FILES, kernel_names
from test_cuda_emulator import DTYPES, Emulator, P, _place_x, backward, emulator, launch  # noqa: F401 (emulator: a fixture)
from tolerance import assert_agrees, backward_K

# (x shape, w shape, stride, padding, dilation, groups): small, so the emulation stays cheap.
BWD_CASES = [
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    ((1, 2, 9, 8), (3, 2, 2, 2), 3, 0, 1, 1),              # stride > kernel
    ((1, 4, 8, 9), (6, 2, 3, 2), (2, 1), (1, 2), (2, 1), 2),  # groups, dilation, pairs
    ((1, 3, 6, 7), (2, 3, 4, 2), 1, "same", 1, 1),          # even kernel: asymmetric 'same'
    ((2, 4, 5, 5), (8, 1, 3, 3), 1, 1, 1, 4),               # depthwise, multiplier 2
]
IDS = ["x{}w{}".format(*c[:2]).replace(" ", "") for c in BWD_CASES]


def _check(gx, gw, gb, gy, x, w, case, dt, what):
    xs, ws, stride, padding, dilation, groups = case
    ref = conv2d_backward_ref(gy, x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
    Ks = backward_K(ws, gy.shape, groups)
    acc = np.dtype(np.float32) if dt == np.float16 else dt
    for name, got in (("x", gx), ("w", gw), ("bias", gb)):
        if got is not None:
            assert_agrees(got, *ref[name], Ks[name], acc, dt, f"grad_{name} {what}")


def _inputs(case, i, dt):
    xs, ws, *_ = case
    p = P(*case)
    seed = 31 * i + sum(xs) + sum(ws)
    return p, values(seed, xs, dt), values(seed + 1, ws, dt), values(seed + 2, p.out_shape, dt), seed


@pytest.mark.parametrize("case", BWD_CASES, ids=IDS)
def test_emulated_direct_backward(emulator, tmp_path, case):
    for i, dt in enumerate(DTYPES):
        p, x, w, gy, seed = _inputs(case, i, dt)
        layout = ["contiguous", "strided", "nhwc", "flipped"][(i + len(IDS[0])) % 4]
        emu = Emulator(emulator, tmp_path, grid_cap=2)
        gx, gw = backward.run_direct_backward(np, emu, gy, _place_x(x, layout, seed), w, p, True, True)
        assert [lp.kernel for lp in emu.launches] == [f"xdev_dgrad_direct_{launch.DTYPE_SUFFIX[dt.name]}",
                                                      f"xdev_wgrad_direct_{launch.DTYPE_SUFFIX[dt.name]}"]
        _check(gx, gw, backward.grad_bias(np, gy), gy, x, w, case, dt, f"direct {case} {dt} {layout}")


@pytest.mark.parametrize("budget", [1 << 30, 1500, 300], ids=["one-block", "image-blocks", "row-blocks"])
@pytest.mark.parametrize("case", BWD_CASES[:4], ids=IDS[:4])
def test_emulated_gemm_backward(emulator, tmp_path, case, budget):
    """im2col.cu + GEMM for grad_w, GEMM + col2im.cu for grad_x, under the blocking a budget forces."""
    for i, dt in enumerate(DTYPES):
        p, x, w, gy, seed = _inputs(case, i, dt)
        layout = ["strided", "nhwc", "contiguous", "flipped"][(i + budget) % 4]
        emu = Emulator(emulator, tmp_path, grid_cap=2)
        needs = [(True, True), (True, False), (False, True)][i]
        gx, gw = backward.run_gemm_backward(np, emu, gy, _place_x(x, layout, seed), w, p, *needs, budget=budget)
        assert (gx is not None, gw is not None) == needs
        assert gx is None or gx.dtype == dt and gx.shape == x.shape
        assert gw is None or gw.dtype == dt and gw.shape == w.shape
        blocks = launch.gemm_blocks(p, p.K, launch.ACC_ITEMSIZE[dt.name], budget)
        if budget == 300 and case is BWD_CASES[0]:
            assert any(b.hb < p.Ho for b in blocks), "the row-block path must be exercised"
        assert sum(lp.kernel.startswith("xdev_col2im") for lp in emu.launches) == (len(blocks) if needs[0] else 0)
        _check(gx, gw, None, gy, x, w, case, dt, f"gemm {case} {dt} {layout} budget {budget}")


def test_backward_kernels_are_defined_and_planned():
    defined = {name for p in CU_FILES for name in kernel_names(p)}
    for sfx in ("f16", "f32", "f64"):
        assert f"xdev_dgrad_direct_{sfx}" in defined and f"xdev_wgrad_direct_{sfx}" in defined
    assert {"xdev_col2im_f32", "xdev_col2im_f64"} <= defined
    p = P((64, 512, 14, 14), (512, 512, 3, 3), 1, 1, 1, 1)
    for dt in ("float16", "float32", "float64"):
        lw = launch.wgrad_direct_launch(p, dt, (1, 1, 1, 1))
        assert lw.block == (launch.WGRAD_THREADS, 1, 1) and lw.shared_mem <= launch.SMEM_BUDGET
        assert lw.grid[0] <= launch.GRID_X_MAX
    for blk in launch.gemm_blocks(p, p.K, 4):
        lc = launch.col2im_launch(p, "float32", blk)
        assert lc.grid[1] <= launch.GRID_YZ_MAX and lc.grid[2] <= launch.GRID_YZ_MAX


def test_trivial_backward_is_zero():
    p = P((0, 3, 5, 5), (4, 3, 3, 3))
    gx, gw = backward.trivial_backward(np, np.zeros((0, 3, 5, 5)), np.ones((4, 3, 3, 3)), p, True, True)
    assert gx.shape == (0, 3, 5, 5) and (gw == 0).all()
    assert backward.trivial_backward(np, np.zeros((1, 3, 5, 5)), np.ones((4, 3, 3, 3)), P((1, 3, 5, 5), (4, 3, 3, 3)),
                                 True, True) is None


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_grad_bias_in_two_reductions_for_every_layout(layout):
    """grad_bias sums per (image, channel) or per row first, then the rest: same bound as one sum."""
    for i, dt in enumerate(DTYPES):
        N, O, Ho, Wo = 3, 5, 7, 6
        gy = values(40 + i, (N, O, Ho, Wo), dt)
        if layout == "nhwc":
            view = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        elif layout == "strided":
            view = np.zeros((N, O, 2 * Ho, Wo), dt)[:, :, ::2]
            view[...] = gy
        else:
            view = gy
        got = backward.grad_bias(np, view)
        ref = conv2d_backward_ref(gy, np.zeros((N, 2, Ho, Wo)), np.zeros((O, 2, 1, 1)))["bias"]
        acc = np.dtype(np.float32) if dt == np.float16 else dt
        assert got.dtype == dt and got.shape == (O,)
        assert_agrees(got, *ref, N * Ho * Wo, acc, dt, f"grad_bias {layout} {dt}")
    assert backward.grad_bias(np, np.zeros((0, 4, 3, 3), np.float32)).tolist() == [0.0] * 4


def test_grad_bias_falls_back_to_one_reduction_when_the_partial_sums_fail():
    """No memory for the partial sums (or any failure of that step): the one reduction over
    (N, Ho, Wo), which needs none, computes grad_bias."""

    class NoPartials(np.ndarray):
        def reshape(self, *a, **k):
            raise MemoryError("Out of memory allocating 1,024 bytes")

    for layout in ("nchw", "nhwc"):
        gy = values(50, (2, 3, 4, 5), np.float32)
        if layout == "nhwc":
            gy = np.ascontiguousarray(gy.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        got = backward.grad_bias(np, gy.view(NoPartials))
        assert got.dtype == np.float32 and got.shape == (3,)
        np.testing.assert_array_equal(np.asarray(got), gy.sum(axis=(0, 2, 3), dtype=np.float32))
