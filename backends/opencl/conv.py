"""conv2d on OpenCL: pad the input once, then implicit GEMM or a direct kernel.

``gemm``: implicit GEMM (im2col addressing inside the kernel; register-blocked on CPUs,
on GPUs the "xl" GEMM micro-kernel with the weights packed and the input gathered). ``direct``: one kernel looping over the taps, the fast
choice for depthwise convolution. ``auto`` picks direct when C/groups == 1 < groups.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xdev.contract import F32, F64, ConvParams, is_exact
from xdev.contract.shapes import cdiv, check_int32, round_up

from . import array as cla
from .array import CLArray
from .gemm import INDEX_HINT, pack, pack_gpu, xl_options, xl_valid
from .kernels import exact_options, type_options
from .protocol import KernelDevice


def choose(p: ConvParams, algorithm: str) -> str:
    if algorithm != "auto":
        return algorithm
    return "direct" if p.Cg == 1 and p.groups > 1 else "gemm"


def pad_input(dev: KernelDevice, x: CLArray, p: ConvParams, slack: int) -> tuple[Any, int, int]:
    """Zero-padded copy in the compute type, with `slack` spare elements at the end."""
    real = F64 if x.dtype == F64 else F32
    pt, pb, pl, pr = p.pad
    Hp, Wp = p.H + pt + pb, p.W + pl + pr
    buf = dev.alloc((p.N * p.C * Hp * Wp + slack) * real.itemsize)
    if p.N * p.C:
        i64, i32 = np.int64, np.int32
        rows = dev.family == "cpu"
        grid = (Hp, p.N * p.C) if rows else (cdiv(Wp, 8) * 8, Hp, p.N * p.C)
        dev.launch("conv_pad.cl", "pad_rows" if rows else "pad_input", type_options(x.dtype, real),
                   grid, None, buf, x.buf, i64(x.offset), *(i64(s) for s in x.strides),
                   i32(p.C), i32(p.H), i32(p.W), i32(Hp), i32(Wp), i32(pt), i32(pl))
    return buf, Hp, Wp


def bias_args(bias: CLArray | None) -> tuple[Any, np.int64, np.int64]:
    if bias is None:
        return None, np.int64(0), np.int64(0)
    return bias.buf, np.int64(bias.offset), np.int64(bias.strides[0])


def conv2d(dev: KernelDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams,
           algorithm: str) -> tuple[CLArray, str]:
    exact = is_exact(x.dtype)
    algo = "direct" if exact else choose(p, algorithm)  # integers and bool: conv_int.cl only
    out = dev.empty(p.out_shape, x.dtype)
    if out.size == 0:
        return out, algo
    # A dilation along a 1-tap axis, or a stride along an axis with one output, changes
    # nothing: use 1 so huge values (torch and numpy accept 2**31) fit the kernels' int.
    p = dataclasses.replace(
        p, dilation=(1 if p.kh == 1 else p.dilation[0], 1 if p.kw == 1 else p.dilation[1]),
        stride=(1 if p.Ho == 1 else p.stride[0], 1 if p.Wo == 1 else p.stride[1]))
    Hp, Wp = p.H + p.pad[0] + p.pad[1], p.W + p.pad[2] + p.pad[3]
    check_int32("conv2d on OpenCL", INDEX_HINT, **{
        "padded H*W": Hp * Wp, "Ho*Wo": p.Ho * p.Wo, "Ho*Wp": p.Ho * Wp, "N*C": p.N * p.C, "N*O": p.N * p.O,
        "C/groups*kH*kW": p.K, "stride": max(p.stride), "dilation": max(p.dilation), "padding": max(p.pad)})
    if exact:
        _exact(dev, x, w, bias, p, out)
    elif algo == "direct" or p.K == 0:
        # (An empty reduction is the bias alone, whichever algorithm was asked for.)
        _direct(dev, x, w, bias, p, out)
    elif dev.family == "cpu":
        _packed(dev, x, w, bias, p, out)
    else:
        _xl(dev, x, w, bias, p, out)
    return out, algo


def _exact(dev: KernelDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    """Integer and bool conv2d (conv_int.cl: direct, exact modulo 2**bits), x and w as views."""
    i32, i64 = np.int32, np.int64
    b, b_off, b_st = bias_args(bias)
    dev.launch("conv_int.cl", "conv_int", exact_options(x.dtype), (round_up(p.Ho * p.Wo, 64), p.O, p.N), None,
               out.buf, x.buf, i64(x.offset), *(i64(s) for s in x.strides),
               w.buf, i64(w.offset), *(i64(s) for s in w.strides),
               x.buf if b is None else b, b_off, b_st, i32(bias is not None),
               i32(p.Cg), i32(p.H), i32(p.W), i32(p.O), i32(p.Og), i32(p.kh), i32(p.kw),
               i32(p.stride[0]), i32(p.stride[1]), i32(p.dilation[0]), i32(p.dilation[1]),
               i32(p.pad[0]), i32(p.pad[2]), i32(p.Ho), i32(p.Wo))


def _geometry(p: ConvParams, Hp: int, Wp: int) -> tuple[np.int32, ...]:
    i32 = np.int32
    return (i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]),
            i32(p.stride[0]), i32(p.stride[1]), i32(p.Ho), i32(p.Wo))


def _direct(dev: KernelDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    vw = dev.params["conv"]["VWD" if x.dtype == F64 else "VW"]
    xp, Hp, Wp = pad_input(dev, x, p, slack=2 * vw + p.W + 64)
    opts = {**type_options(x.dtype, out.dtype), "VW": vw}
    i32, i64 = np.int32, np.int64
    dev.launch("conv_direct.cl", "conv_direct", opts,
               (cdiv(p.Wo, vw), p.Ho, p.N * p.O), None, out.buf, xp,
               w.buf, i64(w.offset), *(i64(s) for s in w.strides), *bias_args(bias),
               i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(Hp), i32(Wp), *_geometry(p, Hp, Wp))


def _packed(dev: KernelDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    c = dev.params["conv"]
    vw = c["VWD"] if x.dtype == F64 else c["VW"]
    MR, NV = c["MR"], c["NV"]
    NR = vw * NV
    s1 = p.stride == (1, 1)
    xp, Hp, Wp = pad_input(dev, x, p, slack=2 * NR + p.W + p.pad[2] + p.pad[3] + 64)
    w, ks = _weights_matrix(dev, w)
    wk, _ = pack(dev, w, (p.groups,), (p.Og * w.strides[0],), w.strides[0], ks, p.Og, p.K, MR)
    npix = p.Ho * Wp if s1 else p.Ho * p.Wo
    # 3 x 3 at stride and dilation 1 (most CNN layers) gets its taps unrolled at build time:
    # VGG-16 at batch 1 1.14x faster (conv5 1.5x) in an interleaved A/B on an AVX2 Zen 4.
    k3 = s1 and (p.kh, p.kw, *p.dilation) == (3, 3, 1, 1)
    opts = {**type_options(x.dtype, out.dtype), "MR": MR, "NV": NV, "VW": vw, "S1": int(s1), "K3": int(k3)}
    i32 = np.int32
    real = F64 if x.dtype == F64 else F32
    tiles = cdiv(npix, NR)
    cb = channel_block(p, tiles, real.itemsize) if out.dtype == real else p.Cg
    for c0 in range(0, max(p.Cg, 1), max(cb, 1)):
        dev.launch("conv_cpu.cl", "conv_packed", opts,
                   (cdiv(p.Og, MR), tiles, p.N * p.groups), None, out.buf, xp, wk,
                   *bias_args(bias), i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(p.groups),
                   i32(Hp), i32(Wp), *_geometry(p, Hp, Wp), i32(c0), i32(min(cb, p.Cg - c0)), i32(c0 > 0))


# The work-items of one pixel tile run back to back, each with its own filters' weights, so
# every pixel tile reads all of the group's weights: from beyond the cache once they outgrow
# it (VGG-16's conv4_2: 9 MiB, read by 35 pixel tiles per image). Past W_BLOCK_BYTES, on maps
# of at least BLOCK_TILES pixel tiles, the input channels run in equal blocks whose weights
# fit W_BLOCK_BYTES, each block's sums added into the output in the compute type (a float16
# output runs in one block: it must round once). Measured on an AVX2 Zen 4 VM (A/B, 24
# rounds): two 4.5 MiB blocks made conv4_2/conv4_3 1.29x faster; blocks of 2 or 4 MiB gained
# less, and splitting conv4_1's 4.5 MiB made it 0.94-0.97x. On small maps (conv5: 10 tiles)
# the extra launches cost more than the weights' reads save.
W_BLOCK_BYTES = 8 << 20
BLOCK_TILES = 32


def channel_block(p: ConvParams, tiles: int, itemsize: int) -> int:
    """Input channels per launch of conv_packed: all of them, or equal blocks whose weights
    fit W_BLOCK_BYTES."""
    per_channel = p.Og * p.kh * p.kw * itemsize
    if p.Cg * per_channel <= W_BLOCK_BYTES or tiles * p.N < BLOCK_TILES:
        return p.Cg
    blocks = cdiv(p.Cg * per_channel, W_BLOCK_BYTES)
    return cdiv(p.Cg, blocks)


def _weights_matrix(dev: KernelDevice, w: CLArray) -> tuple[CLArray, int]:
    """Weights as G matrices of Og rows by K = (c, i, j) columns with one column stride."""
    shape, (wst,) = cla.collapse(w.shape[1:], w.strides[1:])
    if len(shape) > 1:
        w = dev.astype(w, w.dtype)
    return w, (1 if len(shape) != 1 else wst[0])


def tap_offsets(dev: KernelDevice, p: ConvParams, Hp: int, Wp: int, Kp: int) -> CLArray:
    """koff[k] = c*Hp*Wp + i*dh*Wp + j*dw for k = (c, i, j) < K, -1 up to Kp (int32),
    kept on the device per geometry (a few KiB each; layers repeat on every call)."""
    cache = dev.conv_offsets
    key = (p.Cg, p.kh, p.kw, p.dilation, Hp, Wp, Kp)
    t = cache.get(key)
    if t is None:
        c, i, j = np.meshgrid(np.arange(p.Cg), np.arange(p.kh), np.arange(p.kw), indexing="ij")
        off = (c * Hp * Wp + i * p.dilation[0] * Wp + j * p.dilation[1]).reshape(-1)
        host = np.full(Kp, -1, np.int32)
        host[: off.size] = off
        if len(cache) > 256:
            cache.clear()
        t = cache[key] = dev.upload(host)
    return t


def narrow(dev: KernelDevice, t: dict, Og: int, itemsize: int) -> dict:
    """For layers with at most half a tile of output channels (VGG-16's first two have 64
    against 128-row tiles), the same work-group with half the rows and twice the pixel
    columns: per-work-item work and thread count unchanged, no half-empty tiles. Kept
    only if the device can hold it."""
    if Og > t["MWG"] // 2 or t["MDIMC"] % 2:
        return t
    n = {**t, "MWG": t["MWG"] // 2, "NWG": t["NWG"] * 2, "MDIMC": t["MDIMC"] // 2, "NDIMC": t["NDIMC"] * 2}
    d = dev.cl_device
    return n if xl_valid(n, int(d.max_work_group_size), int(d.local_mem_size), itemsize) else t


def _xl(dev: KernelDevice, x, w, bias, p, out) -> None:
    t = xl_options(dev, dev.params["conv_xl"], x.dtype)
    t = narrow(dev, t, p.Og, 8 if x.dtype == F64 else 4)
    xp, Hp, Wp = pad_input(dev, x, p, slack=0)
    Op, Kp = round_up(p.Og, t["MWG"]), round_up(p.K, t["KWG"])
    w, ks = _weights_matrix(dev, w)
    wk, _ = pack_gpu(dev, w, (p.groups,), (p.Og * w.strides[0],), w.strides[0], ks, p.Og, p.K, Op, Kp)
    koff = tap_offsets(dev, p, Hp, Wp, Kp)
    NP = p.N * p.Ho * p.Wo
    i32 = np.int32
    dev.launch("conv_xl.cl", "conv_xl", {**type_options(x.dtype, out.dtype), **t},
               (cdiv(NP, t["NWG"]) * t["NDIMC"], Op // t["MWG"] * t["MDIMC"], p.groups),
               (t["NDIMC"], t["MDIMC"], 1), out.buf, xp, wk, koff.buf, *bias_args(bias),
               i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(Op), i32(Kp), i32(Hp), i32(Wp),
               i32(p.stride[0]), i32(p.stride[1]), i32(p.Ho), i32(p.Wo), i32(NP))
