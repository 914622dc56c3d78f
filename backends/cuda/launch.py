"""Launch plans for xdev's CUDA kernels (the .cu files beside this module): pure Python, no CuPy.

kernels.py turns a plan into a ``cupy.RawModule`` launch; the test suite runs the same plans
through a host emulation of the ``.cu`` files, so the kernel arguments below are checked
against the kernels' real signatures without a GPU.

A plan's ``args`` is a list of ``(kind, value)``: ``("ptr", role)`` for an array (role names
which one), ``("i64", v)`` and ``("i32", v)`` for scalars, in the kernel's parameter order.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from xdev.contract.shapes import INT32_MAX, cdiv, check_int32

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

# What to do about a size past the kernels' 32-bit int indexes.
INDEX_HINT = "split the problem (e.g. a smaller batch or image), or use algorithm='cudnn'"

# Upper bound for one im2col buffer of the "gemm" algorithm; larger problems run in
# blocks of images (and of output rows when one image is larger than this).
COLS_BUDGET_BYTES = 256 << 20

DTYPE_SUFFIX = {"float16": "f16", "float32": "f32", "float64": "f64"}
# im2col copies bits: integer and bool data travel as the signed integer of their width.
IM2COL_SUFFIX = {**DTYPE_SUFFIX, "bool": "i8", "int8": "i8", "uint8": "i8", "int16": "i16", "uint16": "i16",
                 "int32": "i32", "uint32": "i32", "int64": "i64", "uint64": "i64"}
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

    def __hash__(self) -> int:
        # Launches key the kernels' prepared-argument table on every call: hash them once.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.source, self.kernel, self.grid, self.block, self.shared_mem, self.args))
            object.__setattr__(self, "_hash", h)
        return h


def _geometry(p: Any) -> dict[str, int]:
    (sh, sw), (dh, dw) = p.stride, p.dilation
    pt, _pb, pl, _pr = p.pad
    return dict(G=p.groups, Cg=p.C // p.groups, Og=p.O // p.groups, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl)


def _check_sizes(**sizes: int) -> None:
    check_int32("conv2d on CUDA", INDEX_HINT, **sizes)


def direct_smem(cc: int, IH: int, IW: int, khw: int, ot: int, acc_itemsize: int) -> int:
    """Shared-memory bytes of the tiled kernel for a chunk of ``cc`` input channels."""
    per16 = 16 // acc_itemsize
    xs = cdiv(cc * IH * IW, per16) * per16
    return (xs + cc * khw * ot) * acc_itemsize


@functools.lru_cache(maxsize=1024)
def direct_launch(p: Any, dtype: str, xstrides: tuple[int, int, int, int], has_bias: bool) -> Launch:
    """The launch of conv2d_direct.cu for ConvParams ``p`` (x strides in elements)."""
    g = _geometry(p)
    sfx = DTYPE_SUFFIX[dtype]
    acc = ACC_ITEMSIZE[dtype]
    _check_sizes(H=p.H, W=p.W, O=p.O, Ho=p.Ho, Wo=p.Wo, K=p.K)
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
        tiles_w = cdiv(p.Wo, TILE_W)
        tiles = cdiv(p.Ho, TILE_H) * tiles_w
        otiles = cdiv(g["Og"], ot)
        grid = (min(tiles, GRID_X_MAX), min(g["G"] * otiles, GRID_YZ_MAX), min(max(p.N, 1), GRID_YZ_MAX))
        args = head + scalars + [
            ("i32", IH), ("i32", IW), ("i32", cc), ("i32", tiles_w), ("i32", otiles), ("i32", int(has_bias)),
        ]
        return Launch("conv2d_direct.cu", f"xdev_conv_direct_{sfx}_o{ot}", grid, DIRECT_BLOCK, smem, tuple(args))
    # The halo tile of even one channel does not fit: one thread per output element.
    total = p.N * p.O * p.Ho * p.Wo
    blocks = max(1, min(cdiv(total, 256), 1 << 20))
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
    _check_sizes(H=p.H, W=p.W, rows=g["G"] * Kp, L=blk.hb * p.Wo)
    L = blk.hb * p.Wo
    grid = (max(1, min(cdiv(L, 256), 65535)), max(1, min(g["G"] * Kp, GRID_YZ_MAX)), max(1, min(blk.nb, GRID_YZ_MAX)))
    args = [("ptr", "x"), ("ptr", "cols")] + [("i64", int(s)) for s in xstrides] + [
        ("i32", blk.nb), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", p.H), ("i32", p.W),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Wo), ("i32", blk.h0),
        ("i32", blk.hb), ("i32", Kp),
    ]
    return Launch("im2col.cu", f"xdev_im2col_{IM2COL_SUFFIX[dtype]}", grid, (256, 1, 1), 0, tuple(args))


_ELEM_STRIDES: dict[tuple[Any, int], tuple[int, ...]] = {}
_DTYPE_NAMES: dict[Any, str] = {}


def elem_strides(a: Any) -> tuple[int, ...]:
    """An array's strides in elements (kernels index in elements); memoized per (strides, itemsize)."""
    key = (a.strides, a.itemsize)
    out = _ELEM_STRIDES.get(key)
    if out is None:
        out = tuple(int(s) // a.itemsize for s in a.strides)
        if len(_ELEM_STRIDES) > 4096:
            _ELEM_STRIDES.clear()
        _ELEM_STRIDES[key] = out
    return out


def dtype_name(dt: Any) -> str:
    """``dt.name`` ("float32", ...), memoized: NumPy computes the name in Python on every access."""
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = dt.name
    return name


# ---- conv2d backward: col2im.cu and conv2d_backward_direct.cu ----------------------------------

WGRAD_THREADS = 64  # conv2d_backward_direct.cu's XDEV_WGRAD_THREADS
ACC_NAME = {"float16": "float32", "float32": "float32", "float64": "float64"}


@functools.lru_cache(maxsize=1024)
def col2im_launch(p: Any, acc: str, blk: ColsBlock) -> Launch:
    """The launch of col2im.cu for one block; gx (the accumulator) is passed at image blk.n0."""
    g = _geometry(p)
    _check_sizes(HW=p.H * p.W, L=blk.hb * p.Wo, K=p.K)
    grid = (max(1, min(cdiv(p.H * p.W, 256), 65535)), max(1, min(p.C, GRID_YZ_MAX)), max(1, min(blk.nb, GRID_YZ_MAX)))
    args = [("ptr", "dcols"), ("ptr", "gx")] + [
        ("i32", blk.nb), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", p.H), ("i32", p.W),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Wo), ("i32", blk.h0),
        ("i32", blk.hb),
    ]
    return Launch("col2im.cu", f"xdev_col2im_{DTYPE_SUFFIX[acc]}", grid, (256, 1, 1), 0, tuple(args))


def _bwd_scalars(p: Any) -> list[tuple[str, int]]:
    g = _geometry(p)
    _check_sizes(H=p.H, W=p.W, O=p.O, Ho=p.Ho, Wo=p.Wo)
    return [
        ("i32", p.N), ("i32", p.H), ("i32", p.W), ("i32", g["G"]), ("i32", g["Cg"]), ("i32", g["Og"]),
        ("i32", p.kh), ("i32", p.kw), ("i32", g["sh"]), ("i32", g["sw"]), ("i32", g["dh"]),
        ("i32", g["dw"]), ("i32", g["pt"]), ("i32", g["pl"]), ("i32", p.Ho), ("i32", p.Wo),
    ]


@functools.lru_cache(maxsize=1024)
def dgrad_direct_launch(p: Any, dtype: str) -> Launch:
    total = p.N * p.C * p.H * p.W
    blocks = max(1, min(cdiv(total, 256), 1 << 20))
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
