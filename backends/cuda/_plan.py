"""Launch planning for the CUDA kernels: pure Python, no CuPy.

The CUDA device (device.py) turns these plans into ``cupy.RawModule`` launches; the test
suite runs the same plans through a host emulation of the ``.cu`` files, so the kernel
arguments below are checked against the kernels' real signatures without a GPU.

A plan's ``args`` is a list of ``(kind, value)``: ``("ptr", role)`` for an array (role names
which one), ``("i64", v)`` and ``("i32", v)`` for scalars, in the kernel's parameter order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

# conv2d_direct.cu's tile: 16 x 8 threads, two output rows each -> 16 x 16 output pixels.
TILE_W = 16
THREADS_Y = 8
RPT = 2
TILE_H = THREADS_Y * RPT
DIRECT_BLOCK = (TILE_W, THREADS_Y, 1)
# Dynamic shared memory a block may use without opting in (every CUDA GPU has at least this).
SMEM_BUDGET = 48 * 1024
MAX_CHANNEL_CHUNK = 8
GRID_YZ_MAX = 65535
GRID_X_MAX = 2**31 - 1
INT32_MAX = 2**31 - 1

# Upper bound for one im2col buffer of the "gemm" algorithm; larger problems run in
# blocks of images (and of output rows when one image is larger than this).
COLS_BUDGET_BYTES = 256 << 20

DTYPE_SUFFIX = {"float16": "f16", "float32": "f32", "float64": "f64"}
ACC_ITEMSIZE = {"float16": 4, "float32": 4, "float64": 8}  # float16 accumulates in float


@dataclass(frozen=True)
class Launch:
    """One kernel launch: which file and kernel, grid, block, shared memory and arguments."""

    source: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_mem: int
    args: tuple[tuple[str, Any], ...]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _geometry(p: Any) -> dict[str, int]:
    (sh, sw), (dh, dw) = p.stride, p.dilation
    pt, _pb, pl, _pr = p.pad
    return dict(G=p.groups, Cg=p.C // p.groups, Og=p.O // p.groups, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl)


def _check_int32(**values: int) -> None:
    for name, v in values.items():
        if v > INT32_MAX:
            raise ValueError(f"conv2d on CUDA: {name} = {v} exceeds the 32-bit range the kernels index with")


def direct_smem(cc: int, IH: int, IW: int, khw: int, ot: int, acc_itemsize: int) -> int:
    """Shared-memory bytes of the tiled kernel for a chunk of ``cc`` input channels."""
    per16 = 16 // acc_itemsize
    xs = _cdiv(cc * IH * IW, per16) * per16
    return (xs + cc * khw * ot) * acc_itemsize


@functools.lru_cache(maxsize=1024)
def direct_launch(p: Any, dtype: str, xstrides: tuple[int, int, int, int], has_bias: bool) -> Launch:
    """The launch of conv2d_direct.cu for ConvParams ``p`` (x strides in elements)."""
    g = _geometry(p)
    sfx = DTYPE_SUFFIX[dtype]
    acc = ACC_ITEMSIZE[dtype]
    _check_int32(H=p.H, W=p.W, O=p.O, Ho=p.Ho, Wo=p.Wo, K=p.K)
    scalars = [
        ("i32", p.N), ("i32", p.H), ("i32", p.W), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", g["Og"]),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Ho), ("i32", p.Wo),
    ]
    head = [("ptr", "x"), ("ptr", "w"), ("ptr", "bias"), ("ptr", "y")] + [("i64", int(s)) for s in xstrides]
    ot = 16 if g["Og"] > 4 else 4
    IH = (TILE_H - 1) * g["sh"] + (p.kh - 1) * g["dh"] + 1
    IW = (TILE_W - 1) * g["sw"] + (p.kw - 1) * g["dw"] + 1
    khw = p.kh * p.kw
    cc = max(1, min(g["Cg"], MAX_CHANNEL_CHUNK))
    while cc > 1 and direct_smem(cc, IH, IW, khw, ot, acc) > SMEM_BUDGET:
        cc -= 1
    smem = direct_smem(cc, IH, IW, khw, ot, acc)
    if smem <= SMEM_BUDGET:
        tiles_w = _cdiv(p.Wo, TILE_W)
        tiles = _cdiv(p.Ho, TILE_H) * tiles_w
        otiles = _cdiv(g["Og"], ot)
        grid = (min(tiles, GRID_X_MAX), min(g["G"] * otiles, GRID_YZ_MAX), min(max(p.N, 1), GRID_YZ_MAX))
        args = head + scalars + [
            ("i32", IH), ("i32", IW), ("i32", cc), ("i32", tiles_w), ("i32", otiles), ("i32", int(has_bias)),
        ]
        return Launch("conv2d_direct.cu", f"xdev_conv_direct_{sfx}_o{ot}", grid, DIRECT_BLOCK, smem, tuple(args))
    # The halo tile of even one channel does not fit: one thread per output element.
    total = p.N * p.O * p.Ho * p.Wo
    blocks = max(1, min(_cdiv(total, 256), 1 << 20))
    args = head + scalars + [("i32", int(has_bias))]
    return Launch("conv2d_direct.cu", f"xdev_conv_direct_{sfx}_naive", (blocks, 1, 1), (256, 1, 1), 0, tuple(args))


@dataclass(frozen=True)
class ColsBlock:
    """Images [n0, n0+nb) and output rows [h0, h0+hb) handled by one im2col + GEMM."""

    n0: int
    nb: int
    h0: int
    hb: int


def gemm_blocks(p: Any, Kp: int, itemsize: int, budget: int = COLS_BUDGET_BYTES) -> tuple[ColsBlock, ...]:
    return _gemm_blocks(p, Kp, itemsize, budget)


@functools.lru_cache(maxsize=1024)
def _gemm_blocks(p: Any, Kp: int, itemsize: int, budget: int) -> tuple[ColsBlock, ...]:
    """Split the work so that no im2col buffer (nb, G, Kp, hb*Wo) exceeds ``budget`` bytes."""
    per_row = p.groups * Kp * p.Wo * itemsize  # one output row of one image
    per_img = per_row * p.Ho
    max_rows = max(1, INT32_MAX // max(p.Wo, 1))  # hb*Wo indexes with int
    if per_img <= budget and p.Ho <= max_rows:
        nb = max(1, min(p.N, budget // max(per_img, 1), GRID_YZ_MAX))
        return tuple(ColsBlock(n0, min(nb, p.N - n0), 0, p.Ho) for n0 in range(0, p.N, nb))
    hb = max(1, min(p.Ho, budget // max(per_row, 1), max_rows))
    return tuple(ColsBlock(n, 1, h0, min(hb, p.Ho - h0)) for n in range(p.N) for h0 in range(0, p.Ho, hb))


@functools.lru_cache(maxsize=1024)
def im2col_launch(p: Any, dtype: str, xstrides: tuple[int, int, int, int], blk: ColsBlock, Kp: int) -> Launch:
    """The launch of im2col.cu for one block; x is passed at image blk.n0."""
    g = _geometry(p)
    _check_int32(H=p.H, W=p.W, rows=g["G"] * Kp, L=blk.hb * p.Wo)
    L = blk.hb * p.Wo
    grid = (max(1, min(_cdiv(L, 256), 65535)), max(1, min(g["G"] * Kp, GRID_YZ_MAX)), max(1, min(blk.nb, GRID_YZ_MAX)))
    args = [("ptr", "x"), ("ptr", "cols")] + [("i64", int(s)) for s in xstrides] + [
        ("i32", blk.nb), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", p.H), ("i32", p.W),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Wo), ("i32", blk.h0),
        ("i32", blk.hb), ("i32", Kp),
    ]
    return Launch("im2col.cu", f"xdev_im2col_{DTYPE_SUFFIX[dtype]}", grid, (256, 1, 1), 0, tuple(args))


# ---- the two algorithms, written against an array module ------------------------------------
# ``xp`` is cupy on a GPU (numpy in the tests' host emulation) and ``launch(plan, arrays)``
# runs one planned kernel; ``y`` is the preallocated C-contiguous (N, O, Ho, Wo) output and
# the caller has handled empty outputs and K == 0.


def elem_strides(a: Any) -> tuple[int, ...]:
    return tuple(int(s) // a.itemsize for s in a.strides)


def run_gemm(xp: Any, launch: Any, x: Any, w: Any, bias: Any, p: Any, y: Any,
             budget: int = COLS_BUDGET_BYTES, matmul: Any = None) -> None:
    """im2col (own kernel) + one batched GEMM over the groups per block of images.

    ``matmul(a, b, out=...)`` is the GEMM: the device's own cuBLAS call (numpy's in the tests).
    """
    mm = xp.matmul if matmul is None else matmul
    dt = x.dtype
    G, Og, K = p.groups, p.O // p.groups, p.K
    y4 = y.reshape(p.N, G, Og, p.Ho * p.Wo)
    wm = xp.ascontiguousarray(w).reshape(G, Og, K)
    pointwise = p.kh == p.kw == 1 and tuple(p.stride) == (1, 1) and not any(p.pad)
    if pointwise and (bias is None or dt.itemsize > 2):
        # A 1x1 convolution: x already is the column matrix (Ho = H, Wo = W).
        mm(wm, x.reshape(p.N, G, p.C // G, p.H * p.W), out=y4)
        if bias is not None:
            y += bias.reshape(1, p.O, 1, 1)
        return
    Kp = K
    if bias is not None:
        # The bias rides in the GEMM as one more weight column against a row of ones, so the
        # result is rounded once (float16 included).
        wm = xp.concatenate([wm, bias.reshape(G, Og, 1)], axis=2)
        Kp = K + 1
    xs = elem_strides(x)
    for blk in gemm_blocks(p, Kp, dt.itemsize, budget):
        L = blk.hb * p.Wo
        cols = xp.empty((blk.nb, G, Kp, L), dt)
        launch(im2col_launch(p, dt.name, xs, blk, Kp), {"x": x[blk.n0 : blk.n0 + blk.nb], "cols": cols})
        out = y4[blk.n0 : blk.n0 + blk.nb, :, :, blk.h0 * p.Wo : blk.h0 * p.Wo + L]
        mm(wm, cols, out=out)
        del cols


def run_direct(xp: Any, launch: Any, x: Any, w: Any, bias: Any, p: Any, y: Any) -> None:
    """The tiled direct kernel (or its one-thread-per-output fallback)."""
    plan = direct_launch(p, x.dtype.name, elem_strides(x), bias is not None)
    arrays = {
        "x": x,
        "w": xp.ascontiguousarray(w),
        "bias": None if bias is None else xp.ascontiguousarray(bias),
        "y": y,
    }
    launch(plan, arrays)


# ---- conv2d backward ---------------------------------------------------------------------------
# grad_x and grad_w for the "gemm" (im2col.cu / col2im.cu around cuBLAS) and "direct"
# (conv2d_backward_direct.cu) algorithms; grad_bias is a reduction of the array module.

WGRAD_THREADS = 64  # conv2d_backward_direct.cu's XDEV_WGRAD_THREADS
ACC_NAME = {"float16": "float32", "float32": "float32", "float64": "float64"}


@functools.lru_cache(maxsize=1024)
def col2im_launch(p: Any, acc: str, blk: ColsBlock) -> Launch:
    """The launch of col2im.cu for one block; gx (the accumulator) is passed at image blk.n0."""
    g = _geometry(p)
    _check_int32(HW=p.H * p.W, L=blk.hb * p.Wo, K=p.K)
    grid = (max(1, min(_cdiv(p.H * p.W, 256), 65535)), max(1, min(p.C, GRID_YZ_MAX)), max(1, min(blk.nb, GRID_YZ_MAX)))
    args = [("ptr", "dcols"), ("ptr", "gx")] + [
        ("i32", blk.nb), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", p.H), ("i32", p.W),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Wo), ("i32", blk.h0),
        ("i32", blk.hb),
    ]
    return Launch("col2im.cu", f"xdev_col2im_{DTYPE_SUFFIX[acc]}", grid, (256, 1, 1), 0, tuple(args))


def _bwd_scalars(p: Any) -> list[tuple[str, int]]:
    g = _geometry(p)
    _check_int32(H=p.H, W=p.W, O=p.O, Ho=p.Ho, Wo=p.Wo)
    return [
        ("i32", p.N), ("i32", p.H), ("i32", p.W), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", g["Og"]),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Ho), ("i32", p.Wo),
    ]


@functools.lru_cache(maxsize=1024)
def dgrad_direct_launch(p: Any, dtype: str) -> Launch:
    total = p.N * p.C * p.H * p.W
    blocks = max(1, min(_cdiv(total, 256), 1 << 20))
    args = [("ptr", "gy"), ("ptr", "w"), ("ptr", "gx")] + _bwd_scalars(p)
    return Launch("conv2d_backward_direct.cu", f"xdev_dgrad_direct_{DTYPE_SUFFIX[dtype]}", (blocks, 1, 1),
                  (256, 1, 1), 0, tuple(args))


@functools.lru_cache(maxsize=1024)
def wgrad_direct_launch(p: Any, dtype: str, xstrides: tuple[int, int, int, int]) -> Launch:
    total = p.O * p.Cg * p.kh * p.kw
    blocks = max(1, min(total, 1 << 20))
    args = [("ptr", "gy"), ("ptr", "x"), ("ptr", "gw")] + [("i64", int(s)) for s in xstrides] + _bwd_scalars(p)
    smem = WGRAD_THREADS * ACC_ITEMSIZE[dtype]
    return Launch("conv2d_backward_direct.cu", f"xdev_wgrad_direct_{DTYPE_SUFFIX[dtype]}", (blocks, 1, 1),
                  (WGRAD_THREADS, 1, 1), smem, tuple(args))


def grad_bias(xp: Any, gy: Any) -> Any:
    """grad_bias = grad_y summed over N, Ho, Wo, accumulated in float for float16."""
    acc = ACC_NAME[gy.dtype.name]
    return gy.sum(axis=(0, 2, 3), dtype=acc).astype(gy.dtype, copy=False)


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
