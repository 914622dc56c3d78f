"""conv2d on OpenCL: pad the input once, then implicit GEMM or a direct kernel.

``gemm``: implicit GEMM (im2col addressing inside the kernel; register-blocked on CPUs,
local-memory tiles on GPUs). ``direct``: one kernel looping over the taps, the fast
choice for depthwise convolution. ``auto`` picks direct when C/groups == 1 < groups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from xdev.contract import F32, F64, ConvParams

from . import array as cla
from .array import CLArray
from .gemm import cdiv, pack, tile_options
from .kernels import type_options

if TYPE_CHECKING:  # (the device module imports this one)
    from .device import OpenCLDevice


def choose(p: ConvParams, algorithm: str) -> str:
    if algorithm != "auto":
        return algorithm
    return "direct" if p.Cg == 1 and p.groups > 1 else "gemm"


def pad_input(dev: OpenCLDevice, x: CLArray, p: ConvParams, slack: int) -> tuple[Any, int, int]:
    """Zero-padded copy in the compute type, with `slack` spare elements at the end."""
    real = F64 if x.dtype == F64 else F32
    pt, pb, pl, pr = p.pad
    Hp, Wp = p.H + pt + pb, p.W + pl + pr
    buf = dev.alloc((p.N * p.C * Hp * Wp + slack) * real.itemsize)
    if p.N * p.C:
        i64, i32 = np.int64, np.int32
        dev.launch("conv_pad.cl", "pad_input", type_options(x.dtype, real),
                   (cdiv(Wp, 8) * 8, Hp, p.N * p.C), None, buf, x.buf, i64(x.offset),
                   *(i64(s) for s in x.strides), i32(p.C), i32(p.H), i32(p.W), i32(Hp), i32(Wp),
                   i32(pt), i32(pl))
    return buf, Hp, Wp


def bias_args(bias: CLArray | None) -> tuple[Any, np.int64, np.int64]:
    if bias is None:
        return None, np.int64(0), np.int64(0)
    return bias.buf, np.int64(bias.offset), np.int64(bias.strides[0])


def conv2d(dev: OpenCLDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, algorithm: str) -> tuple[CLArray, str]:
    algo = choose(p, algorithm)
    out = dev.empty(p.out_shape, x.dtype)
    if out.size == 0:
        return out, algo
    if algo == "direct" or p.K == 0:
        # (An empty reduction is the bias alone, whichever algorithm was asked for.)
        _direct(dev, x, w, bias, p, out)
    elif dev.family == "cpu":
        _packed(dev, x, w, bias, p, out)
    else:
        _tiled(dev, x, w, bias, p, out)
    return out, algo


def _geometry(p: ConvParams, Hp: int, Wp: int) -> tuple[np.int32, ...]:
    i32 = np.int32
    return (i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]),
            i32(p.stride[0]), i32(p.stride[1]), i32(p.Ho), i32(p.Wo))


def _direct(dev: OpenCLDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    vw = dev.params["conv"]["VWD" if x.dtype == F64 else "VW"]
    xp, Hp, Wp = pad_input(dev, x, p, slack=2 * vw + p.W + 64)
    opts = {**type_options(x.dtype, out.dtype), "VW": vw}
    i32, i64 = np.int32, np.int64
    dev.launch("conv_direct.cl", "conv_direct", opts,
               (cdiv(p.Wo, vw), p.Ho, p.N * p.O), None, out.buf, xp,
               w.buf, i64(w.offset), *(i64(s) for s in w.strides), *bias_args(bias),
               i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(Hp), i32(Wp), *_geometry(p, Hp, Wp))


def _packed(dev: OpenCLDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    c = dev.params["conv"]
    vw = c["VWD"] if x.dtype == F64 else c["VW"]
    MR, NV = c["MR"], c["NV"]
    NR = vw * NV
    s1 = p.stride == (1, 1)
    xp, Hp, Wp = pad_input(dev, x, p, slack=2 * NR + p.W + p.pad[2] + p.pad[3] + 64)
    # Weights as G matrices of Og rows by K = (c, i, j) columns with one column stride.
    shape, (wst,) = cla.collapse(w.shape[1:], w.strides[1:])
    if len(shape) > 1:
        w = dev.astype(w, w.dtype)
    ks = 1 if len(shape) != 1 else wst[0]
    wk, _ = pack(dev, w, (p.groups,), (p.Og * w.strides[0],), w.strides[0], ks, p.Og, p.K, MR)
    npix = p.Ho * Wp if s1 else p.Ho * p.Wo
    opts = {**type_options(x.dtype, out.dtype), "MR": MR, "NV": NV, "VW": vw, "S1": int(s1)}
    i32 = np.int32
    dev.launch("conv_cpu.cl", "conv_packed", opts,
               (cdiv(p.Og, MR), cdiv(npix, NR), p.N * p.groups), None, out.buf, xp, wk,
               *bias_args(bias), i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(p.groups),
               i32(Hp), i32(Wp), *_geometry(p, Hp, Wp))


def _tiled(dev: OpenCLDevice, x: CLArray, w: CLArray, bias: CLArray | None, p: ConvParams, out: CLArray) -> None:
    t = tile_options(dev.params["conv_gpu"])
    xp, Hp, Wp = pad_input(dev, x, p, slack=0)
    rtsm, rtsn = t["TSM"] // t["WPTM"], t["TSN"] // t["WPTN"]
    i32, i64 = np.int32, np.int64
    dev.launch("conv_gpu.cl", "conv_tiled", {**type_options(x.dtype, out.dtype), **t},
               (cdiv(p.Ho * p.Wo, t["TSN"]) * rtsn, cdiv(p.Og, t["TSM"]) * rtsm, p.N * p.groups),
               (rtsn, rtsm, 1), out.buf, xp, w.buf, i64(w.offset), *(i64(s) for s in w.strides),
               *bias_args(bias), i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(p.groups),
               i32(Hp), i32(Wp), *_geometry(p, Hp, Wp))
