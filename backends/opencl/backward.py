"""conv2d backward on OpenCL (kernels in conv_backward.cl).

``gemm``: grad_x of a stride-1 convolution is itself a convolution (of grad_y, with the
weights flipped and their channel axes swapped, padded by the kernel extent minus the forward
padding), so it runs on the forward pass's implicit-GEMM kernels; other strides take the
device's GEMM (gemm.py) for dcols = W^T @ gy and a col2im gather. grad_w = gy @ cols^T runs on
the GEMM kernels too: on CPUs the im2col is fused into the packing of the GEMM's panels
(pack_cols), elsewhere an im2col kernel feeds gemm.py. On CPUs, maps of at least
ROWS_MIN_PIXELS output pixels with width stride 1 take grad_w_rows instead: no panels at all,
the reduction vectorized along output rows (grad_y and input rows are unit-stride runs).
Blocks of images bound the column buffers' memory. ``direct``: one kernel per gradient loops over the taps. ``auto``
picks direct for depthwise convolutions (C/groups == 1 < groups: a K = kH*kW GEMM is too thin),
gemm otherwise, like the forward pass.
"""
from __future__ import annotations

import numpy as np

from xdev.contract import ConvParams, dgrad_as_forward
from xdev.contract.shapes import cdiv

from . import array as cla
from .array import CLArray
from .conv import choose, pad_input
from .conv import conv2d as conv_forward
from .gemm import pack, pad3
from .kernels import type_options
from .protocol import KernelDevice

F64 = np.dtype(np.float64)
SRC = "conv_backward.cl"
COLS_BUDGET_BYTES = 128 << 20


def conv2d_backward(dev: KernelDevice, gy: CLArray, x: CLArray, w: CLArray, p: ConvParams, needs: frozenset[str],
                    algorithm: str, budget: int | None = None):
    algo = choose(p, algorithm)
    budget = COLS_BUDGET_BYTES if budget is None else budget
    dt = x.dtype
    real = F64 if dt == F64 else np.dtype(np.float32)
    gx = dev.empty((p.N, p.C, p.H, p.W), dt) if "x" in needs else None
    gw = dev.empty((p.O, p.Cg, p.kh, p.kw), dt) if "w" in needs else None
    gb = dev.empty((p.O,), dt) if "bias" in needs else None
    L = p.Ho * p.Wo
    empty_sum = p.N * L == 0 or p.Og == 0
    # Contiguous, in the compute type: the kernels and the GEMMs read them so.
    gyc = _real(dev, gy, real) if (gy.size and not empty_sum) else None
    opts = type_options(real, dt)
    i32 = np.int32
    if gb is not None and gb.size:
        if gyc is None:
            dev.fill(gb, 0.0)
        else:
            dev.launch(SRC, "grad_bias", opts, (cdiv(p.O, 8) * 8,), None, gb.buf, gyc.buf,
                       i32(p.N), i32(p.O), i32(L))
    if gyc is None or p.K == 0:
        # No upstream pixels (or no input channels): gradients are zero or empty.
        for g in (gx, gw):
            if g is not None and g.size:
                dev.fill(g, 0.0)
        return gx, gw, gb, algo
    geo = (i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]), i32(p.stride[0]), i32(p.stride[1]))
    pt, pl = p.pad[0], p.pad[2]
    wc = _real(dev, w, real)
    xp = None
    if gw is not None:
        xp, Hp, Wp = pad_input(dev, x, p, slack=ROWS_SLACK)
    if algo == "direct":
        if gx is not None:
            dev.launch(SRC, "direct_grad_x", opts, (cdiv(p.W, 8) * 8, p.H, p.N * p.C), None,
                       gx.buf, gyc.buf, wc.buf, i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og),
                       i32(p.H), i32(p.W), *geo, i32(pt), i32(pl), i32(p.Ho), i32(p.Wo))
        if gw is not None:
            khw = p.kh * p.kw
            dev.launch(SRC, "direct_grad_w", opts, (cdiv(khw, 4) * 4, p.Cg, p.O), None,
                       gw.buf, gyc.buf, xp, i32(p.N), i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og),
                       i32(Hp), i32(Wp), *geo, i32(p.Ho), i32(p.Wo))
        return gx, gw, gb, algo
    if gx is not None and _dgrad_forward_pays(p):
        # Stride 1: the forward kernels compute grad_x; col2im is not needed. The buffer
        # allocated above goes back to the pool first, so peak memory holds one grad_x.
        gx = None
        gx = _grad_x_forward(dev, gy, w, p)
        gx_left = None
    else:
        gx_left = gx
    rows = gw is not None and _rows_pays(dev, p)
    if rows:
        gw = _grad_w_rows(dev, gyc, xp, Hp, Wp, p, gw, real)
    gw_gemm = _gemm(dev, gyc, wc, xp, p, gx_left, gw is not None and not rows, real, dt, opts, budget)
    return gx, (gw if rows else gw_gemm), gb, algo


def _real(dev: KernelDevice, a: CLArray, real) -> CLArray:
    """a itself when already contiguous in the compute type from its buffer's start (the
    kernels take bare buffers, no offset), else such a copy."""
    return a if (a.dtype == real and a.is_c_contiguous() and a.offset == 0) else dev.astype(a, real)


def _dgrad_forward_pays(p: ConvParams) -> bool:
    """grad_x as a forward convolution, or GEMM + col2im? Measured on PoCL (Zen 4, VGG-16):
    the forward kernels win from 16 input channels and 20x20 images on; below that (3-channel
    images, 14x14 maps) their tiles are mostly empty and GEMM + col2im is faster."""
    return dgrad_as_forward(p) is not None and p.C >= 16 and p.H * p.W >= 400


def _grad_x_forward(dev: KernelDevice, gy: CLArray, w: CLArray, p: ConvParams) -> CLArray:
    """grad_x = conv2d(gy, w') with w'[g*Cg + c, o, i, j] = w[g*Og + o, c, kh-1-i, kw-1-j]."""
    Og, khw = p.Og, p.kh * p.kw
    if not w.is_c_contiguous():
        w = dev.astype(w, w.dtype)
    wf = dev.empty((p.C, Og, p.kh, p.kw), w.dtype)
    dev.launch(SRC, "flip_weights", type_options(w.dtype, w.dtype), (cdiv(Og, 8) * 8, p.C), None,
               wf.buf, w.buf, np.int64(w.offset), np.int32(Og), np.int32(p.Cg), np.int32(khw))
    gx, _ = conv_forward(dev, gy, wf, None, dgrad_as_forward(p), "gemm")
    return gx


def _gemm(dev: KernelDevice, gyc, wc, xp, p, gx, want_w, real, out_dtype, opts, budget) -> CLArray | None:
    """Writes grad_x into gx (if given); returns grad_w (if wanted) in x's dtype."""
    if gx is None and not want_w:
        return None
    G, Og, K, L = p.groups, p.Og, p.K, p.Ho * p.Wo
    i32, i64 = np.int32, np.int64
    geo = (i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]), i32(p.stride[0]), i32(p.stride[1]))
    gy4 = dev.reshape(gyc, (p.N, G, Og, L))
    wT = cla.transpose(dev.reshape(wc, (G, Og, K)), (0, 2, 1))  # (G, K, Og), a view
    per_img = G * K * L * real.itemsize
    nb_max = max(1, min(p.N, budget // max(per_img, 1)))
    gw_acc = None
    for n0 in range(0, p.N, nb_max):
        nb = min(nb_max, p.N - n0)
        M = nb * L
        # (G, Og, nb*L): images of the block side by side, the GEMMs' shared operand.
        if nb == 1:
            g = cla.getitem(gy4, (n0,))  # (G, Og, L): a view, no copy
        else:
            blk = cla.getitem(gy4, (slice(n0, n0 + nb),))
            g = dev.reshape(dev.astype(cla.transpose(blk, (1, 2, 0, 3)), real), (G, Og, M))
        if want_w and dev.family == "cpu":
            part = _grad_w_packed(dev, g, xp, p, n0, nb, real)
            if gw_acc is None:
                gw_acc = part
            else:
                dev.launch(SRC, "accumulate", opts, (cdiv(part.size, 64) * 64,), None, gw_acc.buf,
                           i64(gw_acc.offset), part.buf, i64(part.offset), i64(part.size))
        elif want_w:
            cols = dev.empty((G, K, M), real)
            dev.launch(SRC, "im2col_t", opts, (cdiv(L, 16) * 16, K, G * nb), None, cols.buf, xp,
                       i32(n0), i32(nb), i32(p.C), i32(p.Cg), i32(K), i32(p.H + p.pad[0] + p.pad[1]),
                       i32(p.W + p.pad[2] + p.pad[3]), *geo, i32(p.Ho), i32(p.Wo))
            part = dev.matmul(g, cla.transpose(cols, (0, 2, 1)))  # (G, Og, K)
            del cols
            if gw_acc is None:
                gw_acc = part
            else:
                dev.launch(SRC, "accumulate", opts, (cdiv(part.size, 64) * 64,), None, gw_acc.buf,
                           i64(gw_acc.offset), part.buf, i64(part.offset), i64(part.size))
        if gx is not None:
            dcols = dev.matmul(wT, g)  # (G, K, nb*L)
            dev.launch(SRC, "col2im", opts, (cdiv(p.W, 8) * 8, p.H, nb * p.C), None, gx.buf,
                       dcols.buf, i64(dcols.offset), i32(n0), i32(nb), i32(p.C), i32(p.Cg), i32(K),
                       i32(p.H), i32(p.W), *geo, i32(p.pad[0]), i32(p.pad[2]), i32(p.Ho), i32(p.Wo))
            del dcols
    if not want_w:
        return None
    # One conversion into the result's dtype (float16 rounds once, here).
    return dev.astype(dev.reshape(gw_acc, (p.O, p.Cg, p.kh, p.kw)), out_dtype)


PACK_RMAX = 128  # conv_backward.cl's PACK_RMAX
CHUNK_PIXELS = 2048  # reduction length per GEMM batch in _grad_w_packed: panels stay in cache


def _chunk_rows(rows: int, Wo: int) -> int:
    """Output rows per reduction chunk: a divisor of ``rows`` with at most CHUNK_PIXELS pixels."""
    for S in range(max(1, -(-rows * Wo // CHUNK_PIXELS)), rows + 1):
        if rows % S == 0:
            return rows // S
    return 1


def _grad_w_packed(dev: KernelDevice, g: CLArray, xp, p: ConvParams, n0: int, nb: int, real) -> CLArray:
    """gy @ cols^T on the CPU GEMM kernel, its B panels packed straight from the padded input.

    The reduction over nb*Ho*Wo pixels is cut into S chunks (GEMM batches) whose partial
    results sum_chunks adds up: one long reduction would stream panels far larger than the
    caches through every work-item.
    """
    G, Og, K = p.groups, p.Og, p.K
    rpc = _chunk_rows(nb * p.Ho, p.Wo)
    S, Lc = nb * p.Ho // rpc, rpc * p.Wo
    c = dev.params["gemm"]
    vw = c["VWD"] if real == F64 else c["VW"]
    MR, NV = c["MR"], c["NV"]
    NR = vw * NV
    T = cdiv(K, NR)
    if NR > PACK_RMAX:
        raise ValueError(f"OpenCL tuning gives GEMM panels of {NR} columns; pack_cols serves at most {PACK_RMAX}")
    i32, i64 = np.int32, np.int64
    s0, s1, s2 = g.strides
    pa, pa_str = pack(dev, g, (G, S), (s0, Lc * s2), s1, s2, Og, Lc, MR)
    pb = dev.alloc(G * S * T * Lc * NR * real.itemsize)
    dev.launch(SRC, "pack_cols", type_options(real, real), (nb * p.Ho, T, G), None, pb, xp,
               i32(n0), i32(nb), i32(p.C), i32(p.Cg), i32(K), i32(p.H + p.pad[0] + p.pad[1]),
               i32(p.W + p.pad[2] + p.pad[3]), i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]),
               i32(p.stride[0]), i32(p.stride[1]), i32(p.Ho), i32(p.Wo), i32(NR), i32(rpc))
    part = dev.empty((G, S, Og, K), real)
    shape3, (pa3, pb3) = pad3((G, S), pa_str, (S * T * Lc * NR, T * Lc * NR))
    opts = {**type_options(real, real), "MR": MR, "NV": NV, "VW": vw}
    dev.launch("gemm_cpu.cl", "gemm_packed", opts, (cdiv(K, NR), cdiv(Og, MR), G * S), None,
               part.buf, pa, pb, i32(Og), i32(K), i32(Lc), i32(shape3[1]), i32(shape3[2]),
               *(i64(v) for v in pa3), *(i64(v) for v in pb3), i32(0), i32(Lc), i32(0),
               i64(0), i64(Lc * NR), i64(NR))
    if S == 1:
        return part.with_view(0, (G, Og, K), cla.c_strides((G, Og, K)))
    out = dev.empty((G, Og, K), real)
    dev.launch(SRC, "sum_chunks", type_options(real, real), (cdiv(out.size, 64) * 64,), None,
               out.buf, part.buf, i32(S), i64(Og * K), i64(out.size))
    return out


# grad_w_rows against the packed GEMM, measured on PoCL (Zen 4, VGG-16 at batch 1, grad_w time
# over forward time): 224x224 maps 1.07 against 1.74, 112x112 1.02-1.09 against 1.5-1.6, 56x56
# 1.1-1.2 against 1.4-1.8; at 28x28 and 14x14 the packed GEMM wins (1.25 against 1.6, 1.5
# against 2.4: rows of 28 or 14 pixels fill one or two vectors, and each work-item's 24 lane
# sums weigh on a short reduction).
ROWS_TILE = {"MR": 4, "KR": 6}  # micro-tile: 24 vector accumulators (3x8, 6x4, 2x12 were slower)
ROWS_MIN_PIXELS = 1024  # output pixels per image from which grad_w_rows runs
# Reduction pixels per grad_w_rows block: a work-item's 4 rows of grad_y and its taps' rows of
# the input stay in L2 (whole-batch reductions streamed from memory: 2.07 against 1.07 on
# 224x224; 2048-pixel blocks 1.2, 4096 1.1, 8192 1.07). 0: one block.
ROWS_BLOCK_PIXELS = 8192
ROWS_SLACK = 64  # elements after the padded input: grad_w_rows' last vector reads past a row


def _rows_pays(dev: KernelDevice, p: ConvParams) -> bool:
    """grad_w along output rows (CPU devices, width stride 1) rather than the packed GEMM?"""
    return dev.family == "cpu" and (p.stride[1] == 1 or p.Wo == 1) and p.Ho * p.Wo >= ROWS_MIN_PIXELS


def _rows_vw(dev: KernelDevice, Wo: int, real) -> int:
    """Vector width along a row: the device's, or half of it where that pads rows less."""
    c = dev.params["gemm"]
    vw = c["VWD"] if real == F64 else c["VW"]
    half = max(2, vw // 2)
    return half if cdiv(Wo, half) * half < cdiv(Wo, vw) * vw else vw


def _grad_w_rows(dev: KernelDevice, gyc: CLArray, xp, Hp: int, Wp: int, p: ConvParams, gw: CLArray, real) -> CLArray:
    """grad_w with grad_w_rows (conv_backward.cl), no column panels: written straight into gw
    (in its dtype) when one block covers the reduction, else blocks' partials added up."""
    i32, i64 = np.int32, np.int64
    vw = _rows_vw(dev, p.Wo, real)
    Wv = cdiv(p.Wo, vw) * vw
    gy = gyc.buf  # (_real: contiguous from the buffer's start)
    if Wv != p.Wo:
        gy_rows = p.N * p.O * p.Ho
        gy = dev.alloc(gy_rows * Wv * real.itemsize)
        dev.launch(SRC, "pad_rows", type_options(real, real), (cdiv(Wv, 8) * 8, gy_rows), None,
                   gy, gyc.buf, i32(p.Wo), i32(Wv), i64(gy_rows))
    MR, KR = ROWS_TILE["MR"], ROWS_TILE["KR"]
    nrows = p.N * p.Ho
    rpb = nrows if ROWS_BLOCK_PIXELS <= 0 else max(1, min(nrows, ROWS_BLOCK_PIXELS // p.Wo))
    S = cdiv(nrows, rpb)
    out = gw if S == 1 else dev.empty((p.groups, S, p.Og, p.K), real)
    opts = {**type_options(real, out.dtype), "VW": vw, "MR": MR, "KR": KR}
    dev.launch(SRC, "grad_w_rows", opts, (cdiv(p.K, KR), cdiv(p.Og, MR), p.groups * S), None,
               out.buf, gy, xp, i32(p.N), i32(p.C), i32(p.Cg), i32(p.O), i32(p.Og), i32(p.K),
               i32(Hp), i32(Wp), i32(p.kh), i32(p.kw), i32(p.dilation[0]), i32(p.dilation[1]),
               i32(p.stride[0]), i32(p.Ho), i32(p.Wo), i32(Wv), i32(S), i32(rpb))
    if S == 1:
        return gw
    dst = gw if gw.dtype == real else dev.empty(gw.shape, real)
    dev.launch(SRC, "sum_chunks", type_options(real, real), (cdiv(gw.size, 64) * 64,), None,
               dst.buf, out.buf, i32(S), i64(p.Og * p.K), i64(gw.size))
    return dst if dst is gw else dev.astype(dst, gw.dtype)  # (float16 rounds once, here)
