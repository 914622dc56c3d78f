"""numpy.matmul on cuBLAS's column-major GEMM (backends/cuda/gemm_plan.py), without a GPU: each plan
is checked against NumPy through an emulation of cublasGemmStridedBatchedEx."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cuda_sources import load

gemm = load("gemm_plan")


def emulate(g, a_base, a_off, b_base, b_off, c_base, c_off):
    """cublasGemmStridedBatchedEx on flat element buffers, column-major as cuBLAS defines it."""
    def mat(buf, off, rows, cols, ld):  # column-major rows x cols at off with leading dimension ld
        return np.lib.stride_tricks.as_strided(buf[off:], (rows, cols), (buf.itemsize, ld * buf.itemsize))

    for ob, oa, oc in g.outer:
        for i in range(g.batch):
            fr, fc = (g.m, g.k) if g.op_first == gemm.OP_N else (g.k, g.m)
            first = mat(b_base, b_off + ob + i * g.stride_first, fr, fc, g.ld_first)
            first = first if g.op_first == gemm.OP_N else first.T
            sr, sc = (g.k, g.n) if g.op_second == gemm.OP_N else (g.n, g.k)
            second = mat(a_base, a_off + oa + i * g.stride_second, sr, sc, g.ld_second)
            second = second if g.op_second == gemm.OP_N else second.T
            c = mat(c_base, c_off + oc + i * g.stride_c, g.m, g.n, g.ldc)
            c[...] = first @ second


def _view(rng, shape, how):
    """(flat base, element offset, view) for an operand with the strides ``how`` asks for."""
    if how == "c":
        base = rng.standard_normal(int(np.prod(shape)) + 3)
        return base, 3, base[3:].reshape(shape)
    if how == "T":  # the last two dims transposed in memory
        t = shape[:-2] + (shape[-1], shape[-2])
        base = rng.standard_normal(int(np.prod(t)) + 1)
        return base, 1, base[1:].reshape(t).swapaxes(-1, -2)
    if how == "pad":  # rows padded: ld > row length
        big = shape[:-1] + (shape[-1] + 3,)
        base = rng.standard_normal(int(np.prod(big)) + 2)
        return base, 2, base[2:].reshape(big)[..., : shape[-1]]
    raise AssertionError(how)


def _offset(base, view):
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize


@pytest.mark.parametrize("ashape,bshape", [
    ((5, 7), (7, 3)), ((1, 7), (7, 1)), ((4, 1), (1, 6)), ((3, 5, 7), (7, 2)), ((2, 1, 4, 3), (5, 3, 6)),
    ((6, 4, 3), (1, 3, 5)), ((2, 3, 4, 5), (2, 3, 5, 2)), ((1, 9), (3, 9, 4)),
])
def test_gemm_plan_matches_numpy_matmul(ashape, bshape):
    rng = np.random.default_rng(sum(ashape) * 31 + sum(bshape))
    for how_a, how_b in itertools.product(["c", "T", "pad"], repeat=2):
        ab, ao, a = _view(rng, ashape, how_a)
        bb, bo, b = _view(rng, bshape, how_b)
        ref = np.matmul(a, b)
        c = np.full(ref.shape, np.nan)
        g = gemm.plan_arrays(a.shape, a.strides, b.shape, b.strides, c.shape, c.strides, 8)
        assert not isinstance(g, str), (how_a, how_b, g)
        emulate(g, ab, _offset(ab, a), bb, _offset(bb, b), c.reshape(-1), 0)
        np.testing.assert_allclose(c, ref, rtol=1e-12, atol=1e-12, err_msg=f"{ashape}@{bshape} {how_a}/{how_b}")


def test_gemm_plan_writes_into_a_strided_output_like_the_conv_blocks():
    """conv2d 'gemm': w (G, Og, K) @ cols (nb, G, K, L) into a slice of y (N, G, Og, Ho*Wo)."""
    rng = np.random.default_rng(5)
    G, Og, K, nb, L, HW = 3, 4, 6, 2, 5, 9
    w = rng.standard_normal((G, Og, K))
    cols = rng.standard_normal((nb, G, K, L))
    y = np.full((nb + 1, G, Og, HW), np.nan)
    out = y[1:, :, :, 2 : 2 + L]
    g = gemm.plan_arrays(w.shape, w.strides, cols.shape, cols.strides, out.shape, out.strides, 8)
    assert g.batch == G and len(g.outer) == nb  # the broadcast weight cannot merge with the image dim
    emulate(g, w.reshape(-1), 0, cols.reshape(-1), 0, y.reshape(-1), _offset(y.reshape(-1), out))
    np.testing.assert_allclose(out, np.matmul(w, cols), rtol=1e-12)
    assert np.isnan(y[0]).all() and np.isnan(y[1:, :, :, :2]).all()  # nothing outside the slice


def test_gemm_plan_merges_batches_and_asks_for_copies_it_needs():
    dims = gemm.collapse((2, 3, 4), (48, 16, 4), (0, 0, 0), (12, 4, 1))
    assert dims == [(24, (4, 0, 1))]
    assert gemm.collapse((2, 1, 3), (0, 99, 5), (3, 99, 1)) == [(2, (0, 3)), (3, (5, 1))]
    a = np.ones((4, 6))[:, ::2]  # column stride 2: no unit stride
    b = np.ones((3, 2))
    c = np.empty((4, 2))
    assert gemm.plan_arrays(a.shape, a.strides, b.shape, b.strides, c.shape, c.strides, 8) == "a"
    assert gemm.plan_arrays(b.T.shape, b.T.strides, a.shape[::-1], a.T.strides, (2, 4), (32, 8), 8) == "b"
    assert gemm.plan_arrays((2, 0), (0, 8), (0, 3), (24, 8), (2, 3), (24, 8), 8) == "zero"
    assert gemm.plan_arrays((0, 4), (32, 8), (4, 3), (24, 8), (0, 3), (24, 8), 8) == "empty"
    ct = np.empty((2, 4)).T  # output transposed in memory: computed packed, then copied
    assert gemm.plan_arrays((4, 3), (24, 8), (3, 2), (16, 8), ct.shape, ct.strides, 8) == "c"
