"""conv2d's gradients on CUDA: cuDNN, or xdev's kernels around cuBLAS ("gemm") or alone ("direct").

No CuPy here (see conv.py): ``xp`` is cupy on a GPU and numpy in the tests' host emulation.
grad_x and grad_w run im2col.cu / col2im.cu around the GEMM, or conv2d_backward_direct.cu;
grad_bias is a reduction of the array module.
"""
from __future__ import annotations

from typing import Any

from xdev.contract import ConvParams

from .conv import default_algorithm, refusal
from .cudnn_tune import CudnnUnsupported
from .launch import (ACC_ITEMSIZE, ACC_NAME, COLS_BUDGET_BYTES, col2im_launch, dgrad_direct_launch, dtype_name,
                     elem_strides, gemm_blocks, im2col_launch, wgrad_direct_launch)


def conv2d_backward(dev: Any, grad_y: Any, x: Any, w: Any, p: ConvParams, needs: frozenset[str],
                    algorithm: str) -> tuple[Any, Any, Any, str]:
    """(grad_x, grad_w, grad_bias, algorithm) on CudaDevice ``dev`` (current); None where not needed."""
    xp = dev.xp
    algo = default_algorithm(dev) if algorithm == "auto" else algorithm  # checked by xdev._ops
    need_x, need_w = "x" in needs, "w" in needs
    gb = grad_bias(xp, grad_y) if "bias" in needs else None
    trivial = trivial_backward(xp, x, w, p, need_x, need_w)
    if trivial is not None or not (need_x or need_w):
        return (*(trivial or (None, None)), gb, algo)
    if algo == "cudnn":
        try:
            return (*dev.cudnn.backward(grad_y, x, w, p, need_x, need_w), gb, "cudnn")
        except CudnnUnsupported as e:
            if algorithm != "auto":
                raise refusal(dev, x, w, p, "this convolution's backward pass", e) from None
            algo = "gemm"
    if algo == "gemm":
        gx, gw = run_gemm_backward(xp, dev.launch, grad_y, x, w, p, need_x, need_w, matmul=dev.gemm_into)
    else:
        gx, gw = run_direct_backward(xp, dev.launch, grad_y, x, w, p, need_x, need_w)
    return gx, gw, gb, algo


def grad_bias(xp: Any, gy: Any) -> Any:
    """grad_bias = grad_y summed over N, Ho, Wo, accumulated in float for float16.

    In two steps, each a reduction with many outputs: a reduction over (0, 2, 3) at once
    has only O outputs (64 for VGG's first layers), which leaves most of a GPU idle while it
    reads all of grad_y. Packed NCHW: the Ho*Wo pixels of each (image, channel), then the
    images; packed NHWC: the Wo pixels of each row, then the N*Ho rows.
    """
    acc = ACC_NAME[dtype_name(gy.dtype)]
    N, O, Ho, Wo = gy.shape
    out = None
    try:
        if gy.size == 0:
            pass
        elif gy.flags.c_contiguous:
            out = gy.reshape(N, O, Ho * Wo).sum(axis=2, dtype=acc).sum(axis=0)  # (N, O), then O
        elif gy.transpose(0, 2, 3, 1).flags.c_contiguous:
            out = gy.transpose(0, 2, 3, 1).reshape(N * Ho, Wo, O).sum(axis=1, dtype=acc).sum(axis=0)  # (N*Ho, O)
    except Exception:
        out = None  # e.g. no memory for the partial sums: the one reduction needs none
    if out is None:
        out = gy.sum(axis=(0, 2, 3), dtype=acc)
    return out.astype(gy.dtype, copy=False)


def trivial_backward(xp: Any, x: Any, w: Any, p: Any, need_x: bool, need_w: bool) -> tuple[Any, Any] | None:
    """Zero gradients when no product contributes (no upstream pixel, input or output channel)."""
    if p.N * p.Ho * p.Wo and p.K and p.O:
        return None
    return (xp.zeros(tuple(x.shape), x.dtype) if need_x else None,
            xp.zeros(tuple(w.shape), w.dtype) if need_w else None)


def run_gemm_backward(xp: Any, launch: Any, gy: Any, x: Any, w: Any, p: Any, need_x: bool, need_w: bool,
                      budget: int = COLS_BUDGET_BYTES, matmul: Any = None) -> tuple[Any, Any]:
    """grad_w = sum over images of gy @ cols^T (im2col.cu + batched GEMM); grad_x = col2im.cu of
    W^T @ gy. float16 computes in float32 and rounds once at the end. ``matmul(a, b, out=...)``
    is the GEMM: the device's own cuBLAS call (numpy's in the tests)."""
    mm = xp.matmul if matmul is None else matmul
    dt = x.dtype
    acc = ACC_NAME[dt.name]
    G, Og, K, Wo = p.groups, p.O // p.groups, p.K, p.Wo
    gy4 = xp.ascontiguousarray(gy).reshape(p.N, G, Og, p.Ho * Wo)
    wT = xp.ascontiguousarray(w).astype(acc, copy=False).reshape(G, Og, K).transpose(0, 2, 1)
    gx_acc = xp.zeros((p.N, p.C, p.H, p.W), acc) if need_x else None
    gw_acc = xp.zeros((G, Og, K), acc) if need_w else None
    xs = elem_strides(x)
    for blk in gemm_blocks(p, K, ACC_ITEMSIZE[dt.name], budget):
        L = blk.hb * Wo
        g = gy4[blk.n0 : blk.n0 + blk.nb, :, :, blk.h0 * Wo : blk.h0 * Wo + L].astype(acc)  # (nb, G, Og, L)
        if need_w:
            cols = xp.empty((blk.nb, G, K, L), dt)
            launch(im2col_launch(p, dt.name, xs, blk, K), {"x": x[blk.n0 : blk.n0 + blk.nb], "cols": cols})
            cols = cols.astype(acc, copy=False)
            part = xp.empty((blk.nb, G, Og, K), acc)
            mm(g, cols.transpose(0, 1, 3, 2), out=part)
            gw_acc += part.sum(axis=0)
            del cols
        if need_x:
            dcols = xp.empty((blk.nb, G, K, L), acc)
            mm(wT, g, out=dcols)
            launch(col2im_launch(p, acc, blk), {"dcols": dcols, "gx": gx_acc[blk.n0 : blk.n0 + blk.nb]})
            del dcols
    gx = gx_acc.astype(dt, copy=False) if need_x else None
    gw = gw_acc.reshape(p.O, p.C // G, p.kh, p.kw).astype(dt, copy=False) if need_w else None
    return gx, gw


def run_direct_backward(xp: Any, launch: Any, gy: Any, x: Any, w: Any, p: Any, need_x: bool,
                        need_w: bool) -> tuple[Any, Any]:
    """The direct kernels: a gather per input element, a block reduction per weight element."""
    dt = x.dtype
    gyc = xp.ascontiguousarray(gy)
    gx = gw = None
    if need_x:
        gx = xp.empty((p.N, p.C, p.H, p.W), dt)
        launch(dgrad_direct_launch(p, dt.name), {"gy": gyc, "w": xp.ascontiguousarray(w), "gx": gx})
    if need_w:
        gw = xp.empty(tuple(w.shape), dt)
        launch(wgrad_direct_launch(p, dt.name, elem_strides(x)), {"gy": gyc, "x": x, "gw": gw})
    return gx, gw
