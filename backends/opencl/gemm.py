"""matmul on OpenCL: shape logic, then one of three kernel families.

* ``packed`` (the CPU kernel family): operands packed into panels, register-blocked
  micro-kernel;
* ``xl`` (the GPU kernel family, large products): operands packed k-major into
  zero-padded panels (``pack_gpu.cl``), then a 2-D register-tiled kernel with vector
  loads and a software-pipelined K loop (``gemm_xl.cl``; parameters from ``python -m
  xdev.tune``);
* ``tiled`` (the GPU kernel family, mid-sized products under ``params["xl_work"]``
  multiply-adds, where two packing passes would not pay): local-memory tiles read
  straight from the strided operands;
* ``small``: one work-item per output, for problems too small to repay either
  (fewer than ``params["small_work"]`` multiply-adds per matrix);
* ``tc`` (NVIDIA GPUs of compute capability 8.0+, float16 and, when asked for, TF32):
  the tensor cores through inline PTX (``gemm_tc.cl``, see ``tc.py``); operands are read
  in place when their rows are 16-byte aligned and k- (A) or n-contiguous (B), else
  packed into that form first.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xdev.contract import F32, F64, KernelBuildError, broadcast_batch, is_exact, matmul_shape
from xdev.contract.shapes import cdiv, check_int32, round_up

from . import array as cla
from . import tc
from .array import CLArray
from .kernels import exact_options, type_options
from .protocol import KernelDevice

Strides = tuple[int, ...]


# What to do about a size past the kernels' 32-bit index type (they index rows, columns and
# image planes with int).
INDEX_HINT = "split the problem (e.g. a smaller batch or image), or run it on the numpy or cuda backend"


def family(dev: KernelDevice, M: int, N: int, K: int, dtype: np.dtype | None = None) -> str:
    if M * N * K < dev.params["small_work"]:
        return "small"
    if dev.family == "cpu":
        return "packed"
    if dtype is not None and tc.mode(dev, dtype) is not None:
        return "tc"
    return "xl" if M * N * K >= dev.params["xl_work"] else "tiled"


def pad3(shape: tuple[int, ...], *strides: Strides) -> tuple[tuple[int, ...], list[Strides]]:
    """Left-pad batch dims to exactly 3 (size 1, stride 0)."""
    k = 3 - len(shape)
    return (1,) * k + tuple(shape), [(0,) * k + tuple(s) for s in strides]


def matmul(dev: KernelDevice, a: CLArray, b: CLArray) -> CLArray:
    out_shape = matmul_shape(a.shape, b.shape)
    dt = a.dtype
    if a.ndim == 1:
        a = a.with_view(a.offset, (1,) + a.shape, (0,) + a.strides)
    if b.ndim == 1:
        b = b.with_view(b.offset, b.shape + (1,), b.strides + (0,))
    M, K = a.shape[-2:]
    N = b.shape[-1]
    batch = broadcast_batch(a.shape[:-2], b.shape[:-2], a.shape, b.shape)
    nb = len(batch)

    def batch_strides(x: CLArray) -> tuple[int, ...]:
        shp = (1,) * (nb - (x.ndim - 2)) + x.shape[:-2]
        st = (0,) * (nb - (x.ndim - 2)) + x.strides[:-2]
        return tuple(0 if n == 1 else s for n, s in zip(shp, st))

    out = dev.empty(batch + (M, N), dt)
    exact = is_exact(dt)
    if out.size:
        if K == 0 and not exact:
            dev.fill(out, 0.0)
        else:
            astr, bstr = batch_strides(a), batch_strides(b)
            ostr = tuple(s // (M * N) for s in cla.c_strides(batch)) if batch else ()
            shape, (astr, bstr, _) = cla.collapse(batch, astr, bstr, ostr)
            if len(shape) > 3:
                # Rare: materialize the broadcast so all batch dims merge into one.
                full = batch + (M, K)
                a = dev.astype(a.with_view(a.offset, full, astr_full(a, nb, batch)), dt)
                full = batch + (K, N)
                b = dev.astype(b.with_view(b.offset, full, astr_full(b, nb, batch)), dt)
                shape, (astr, bstr, _) = cla.collapse(batch, batch_strides(a), batch_strides(b), ostr)
            check_int32("matmul on OpenCL", INDEX_HINT, M=M, N=N, K=K, **{
                "M*N": M * N, "M*K": M * K, "K*N": K * N, "batch": int(np.prod(shape, dtype=np.int64))})
            # Integer and bool data: the small kernel at every size, exact (common.cl's XT types).
            fam = "small" if exact else family(dev, M, N, K, dt)
            if fam == "tc" and not _tc(dev, a, b, out, M, N, K, shape, astr, bstr):
                fam = family(dev, M, N, K, dt)  # its build failed: the device has no tc family now
            if fam != "tc":
                run = {"packed": _packed, "tiled": _tiled, "small": _small, "xl": _xl}[fam]
                run(dev, a, b, out, M, N, K, shape, astr, bstr)
    return out.with_view(0, out_shape, cla.c_strides(out_shape))


def astr_full(x: CLArray, nb: int, batch: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of x broadcast to batch + its matrix dims (0 on broadcast batch dims)."""
    k = nb - (x.ndim - 2)
    shp = (1,) * k + x.shape[:-2]
    st = (0,) * k + x.strides[:-2]
    return tuple(0 if n == 1 else s for n, s in zip(shp, st)) + x.strides[-2:]


def _small(dev: KernelDevice, a: CLArray, b: CLArray, out: CLArray, M: int, N: int, K: int,
           shape: tuple[int, ...], astr: Strides, bstr: Strides) -> None:
    shape3, (as3, bs3) = pad3(shape, astr, bstr)
    B = int(np.prod(shape3))
    i64 = np.int64
    # Integer and bool data: exact, modulo 2**bits (common.cl's XT types), any size, K = 0 too.
    opts = exact_options(a.dtype) if is_exact(a.dtype) else type_options(a.dtype, out.dtype)
    dev.launch("gemm_small.cl", "gemm_small", opts,
               (N, M, B), None, out.buf, a.buf, i64(a.offset), b.buf, i64(b.offset),
               np.int32(M), np.int32(N), np.int32(K), np.int32(shape3[1]), np.int32(shape3[2]),
               *(i64(s) for s in as3), i64(a.strides[-2]), i64(a.strides[-1]),
               *(i64(s) for s in bs3), i64(b.strides[-2]), i64(b.strides[-1]))


def pack(dev: KernelDevice, src: CLArray, shape: tuple[int, ...], strides: Strides, rs: int, ks: int,
         rows: int, K: int, R: int) -> tuple[Any, Strides]:
    """Panels of R rows for the packed GEMM; returns (buffer, packed strides per batch dim)."""
    real = F64 if src.dtype == F64 else F32
    own = [(n, s) for n, s in zip(shape, strides) if s != 0]
    own_shape, (own_str,) = pad3(tuple(n for n, _ in own), tuple(s for _, s in own))
    PB = int(np.prod(own_shape))
    T = cdiv(rows, R)
    panel = T * K * R
    buf = dev.alloc(PB * panel * real.itemsize)
    KB = dev.params["KB"]
    i64, i32 = np.int64, np.int32
    dev.launch("pack.cl", "pack", type_options(src.dtype, src.dtype),
               (cdiv(K, KB), T, PB), None, buf, src.buf, i64(src.offset),
               i32(own_shape[1]), i32(own_shape[2]), *(i64(s) for s in own_str),
               i64(rs), i64(ks), i32(rows), i32(K), i32(R), i32(KB))
    return buf, packed_strides(shape, strides, panel)


def packed_strides(shape, strides, panel: int) -> tuple[int, ...]:
    """Element stride of each (collapsed) out-batch dim inside a packed buffer of panels
    (0 where the operand is broadcast: one panel serves every index)."""
    pstr, acc = [], panel
    for n, s in reversed(list(zip(shape, strides))):
        if s != 0:
            pstr.append(acc)
            acc *= n
        else:
            pstr.append(0)
    return tuple(reversed(pstr))


def _packed(dev: KernelDevice, a: CLArray, b: CLArray, out: CLArray, M: int, N: int, K: int,
            shape: tuple[int, ...], astr: Strides, bstr: Strides) -> None:
    g = dev.params["gemm"]
    vw = g["VWD"] if a.dtype == F64 else g["VW"]
    MR, NV = g["MR"], g["NV"]
    NR = vw * NV
    real = F64 if a.dtype == F64 else F32
    pa, pa_str = pack(dev, a, shape, astr, a.strides[-2], a.strides[-1], M, K, MR)
    if b_in_place(b, bstr, M, N, MR, NR, real):
        pb, pb_str, where = b.buf, tuple(0 for _ in shape), (b.offset, NR, b.strides[-2])
    else:
        pb, pb_str = pack(dev, b, shape, bstr, b.strides[-1], b.strides[-2], N, K, NR)
        where = (0, K * NR, NR)
    shape3, (pa3, pb3) = pad3(shape, pa_str, pb_str)
    B = int(np.prod(shape3))
    opts = {**type_options(a.dtype, out.dtype), "MR": MR, "NV": NV, "VW": vw}
    i64, i32 = np.int64, np.int32
    kc = k_block(K, N, pb_str, real.itemsize) if out.dtype == real else K
    for k0 in range(0, max(K, 1), max(kc, 1)):
        dev.launch("gemm_cpu.cl", "gemm_packed", opts,
                   (cdiv(N, NR), cdiv(M, MR), B), None, out.buf, pa, pb,
                   i32(M), i32(N), i32(K), i32(shape3[1]), i32(shape3[2]),
                   *(i64(s) for s in pa3), *(i64(s) for s in pb3), i32(k0), i32(min(kc, K - k0)), i32(k0 > 0),
                   *(i64(v) for v in where))


# Packing B reads and writes all of it once; for few rows of A that is most of the work
# (32 x 4096 x 4096 on the AVX2 VM: packing B took 17.8 ms of 25.7). A row-major B whose rows
# hold whole tiles (N a multiple of NR: no tile reads past a row's end) is read in place
# when A has at most IN_PLACE_ROW_TILES tiles of rows: there, interleaved A/B, 1 x 4096 x
# 4096 ran 3.0x and 32 x 4096 x 4096 1.22x faster, while 64 and 96 rows were 0.54x and 0.79x
# (B's rows a row stride apart defeat the prefetcher; packing pays off once A reuses B more).
IN_PLACE_ROW_TILES = 6


def b_in_place(b: CLArray, bstr: Strides, M: int, N: int, MR: int, NR: int, real: np.dtype) -> bool:
    return (cdiv(M, MR) <= IN_PLACE_ROW_TILES and N % NR == 0 and b.dtype == real and b.strides[-1] == 1
            and b.strides[-2] >= N and not any(bstr))


# Each work-item streams its A and B panels through the whole K, and the work-items of one
# row of tiles read all of B: past the last-level cache B came from memory once per row
# (sgemm 4096^3 at 0.38x OpenBLAS on the 2-core EPYC, 64 MiB of B; 2048^3, 16 MiB, at
# 0.94x). Larger problems run in K blocks whose slice of B fits B_BLOCK_BYTES, the partial
# products added into C in the compute type (float32/float64 outputs; float16 output runs
# in one block: it must round once).
B_BLOCK_BYTES = 8 << 20
B_WHOLE_BYTES = 16 << 20


def k_block(K: int, N: int, pb_str: Strides, itemsize: int) -> int:
    """The K block of the packed GEMM: all of K while B (one batch's) is at most
    B_WHOLE_BYTES, else a multiple of 64 whose slice of B is at most B_BLOCK_BYTES."""
    if K * N * itemsize <= B_WHOLE_BYTES or any(pb_str):  # (a batched B: its panels are per batch)
        return K
    return max(64, B_BLOCK_BYTES // (N * itemsize) // 64 * 64)


def tile_options(t: dict[str, Any]) -> dict[str, int]:
    return {k: int(t[k]) for k in ("TSM", "TSN", "TSK", "WPTM", "WPTN")}


def _tiled(dev: KernelDevice, a: CLArray, b: CLArray, out: CLArray, M: int, N: int, K: int,
           shape: tuple[int, ...], astr: Strides, bstr: Strides) -> None:
    t = tile_options(dev.params["gemm_gpu"])
    shape3, (as3, bs3) = pad3(shape, astr, bstr)
    B = int(np.prod(shape3))
    rtsm, rtsn = t["TSM"] // t["WPTM"], t["TSN"] // t["WPTN"]
    i64, i32 = np.int64, np.int32
    dev.launch("gemm_gpu.cl", "gemm_tiled", {**type_options(a.dtype, out.dtype), **t},
               (cdiv(N, t["TSN"]) * rtsn, cdiv(M, t["TSM"]) * rtsm, B), (rtsn, rtsm, 1),
               out.buf, a.buf, i64(a.offset), b.buf, i64(b.offset),
               i32(M), i32(N), i32(K), i32(shape3[1]), i32(shape3[2]),
               *(i64(s) for s in as3), i64(a.strides[-2]), i64(a.strides[-1]),
               *(i64(s) for s in bs3), i64(b.strides[-2]), i64(b.strides[-1]))


XL_KEYS = ("MWG", "NWG", "KWG", "MDIMC", "NDIMC", "VWM", "VWN", "PAD", "DB")


def xl_local_bytes(t: dict, itemsize: int) -> int:
    """Local memory of one xl work-group: A and B slices, padded, one or two buffers."""
    return (2 if t["DB"] else 1) * t["KWG"] * (t["MWG"] + t["NWG"] + 2 * t["PAD"]) * itemsize


def xl_valid(t: dict[str, int], max_threads: int, local_bytes: int, itemsize: int = 4) -> bool:
    """The conditions gemm_xl.cl checks with #error, plus the device's limits and a
    register budget (at most 128 accumulators, 8 x 16, per work-item)."""
    nthr = t["MDIMC"] * t["NDIMC"]
    if t["MWG"] % t["MDIMC"] or t["NWG"] % t["NDIMC"]:
        return False
    wptm, wptn = t["MWG"] // t["MDIMC"], t["NWG"] // t["NDIMC"]
    mv, nv = t["MWG"] // t["VWM"], t["NWG"] // t["VWN"]
    return (wptm % t["VWM"] == 0 and wptn % t["VWN"] == 0 and nthr % mv == 0 and nthr % nv == 0
            and t["PAD"] % t["VWM"] == 0 and t["PAD"] % t["VWN"] == 0
            and t["KWG"] * mv >= nthr and t["KWG"] * nv >= nthr
            and nthr <= max_threads and wptm * wptn <= 128
            and xl_local_bytes(t, itemsize) <= local_bytes)


def xl_options(dev: KernelDevice, t: dict, dtype: np.dtype) -> dict[str, int]:
    """The xl kernel's -D options, shrunk to the device's local memory for wide types
    (a float32-tuned 128x128 tile with two buffers holds 32 KiB; in double it would not
    fit NVIDIA's 48 KiB): first one buffer, then a shallower K slice."""
    t = {k: int(t[k]) for k in XL_KEYS}
    item = 8 if np.dtype(dtype) == F64 else 4
    limit = int(dev.cl_device.local_mem_size)
    while xl_local_bytes(t, item) > limit:
        if t["DB"]:
            t["DB"] = 0
        elif t["KWG"] * t["MWG"] // t["VWM"] > t["MDIMC"] * t["NDIMC"] and t["KWG"] * t["NWG"] // t["VWN"] > t["MDIMC"] * t["NDIMC"]:
            t["KWG"] //= 2
        else:
            break  # the build reports the overflow with the options
    return t


def pack_gpu(dev: KernelDevice, src: CLArray, shape, strides, rs: int, ks: int, R: int, K: int, Rp: int, Kp: int,
             keep: bool = False):
    """src's R x K matrices (r stride rs, k stride ks) as zero-padded [Kp][Rp] panels in the
    compute type (`keep`: in src's own type); returns (buffer, packed strides per batch dim)."""
    real = src.dtype if keep else F64 if src.dtype == F64 else np.dtype(np.float32)
    own = [(n, s) for n, s in zip(shape, strides) if s != 0]
    own_shape, (own_str,) = pad3(tuple(n for n, _ in own), tuple(s for _, s in own))
    PB = int(np.prod(own_shape))
    panel = Kp * Rp
    buf = dev.alloc(PB * panel * real.itemsize)
    i64, i32 = np.int64, np.int32
    opts = {**type_options(src.dtype, src.dtype), **({"PACK_KEEP": 1} if keep else {})}
    dev.launch("pack_gpu.cl", "pack_kr", opts,
               (cdiv(Rp, 32) * 32, cdiv(Kp, 32) * 8, PB), (32, 8, 1), buf, src.buf, i64(src.offset),
               i32(own_shape[1]), i32(own_shape[2]), *(i64(s) for s in own_str),
               i64(rs), i64(ks), i32(R), i32(K), i32(Rp), i32(Kp))
    return buf, packed_strides(shape, strides, panel)


def _xl(dev: KernelDevice, a, b, out, M, N, K, shape, astr, bstr) -> None:
    t = xl_options(dev, dev.params["gemm_xl"], a.dtype)
    Mp, Np, Kp = round_up(M, t["MWG"]), round_up(N, t["NWG"]), round_up(K, t["KWG"])
    pa, pa_str = pack_gpu(dev, a, shape, astr, a.strides[-2], a.strides[-1], M, K, Mp, Kp)
    pb, pb_str = pack_gpu(dev, b, shape, bstr, b.strides[-1], b.strides[-2], N, K, Np, Kp)
    shape3, (pa3, pb3) = pad3(shape, pa_str, pb_str)
    B = int(np.prod(shape3))
    i64, i32 = np.int64, np.int32
    dev.launch("gemm_xl.cl", "gemm_xl", {**type_options(a.dtype, out.dtype), **t},
               (Np // t["NWG"] * t["NDIMC"], Mp // t["MWG"] * t["MDIMC"], B), (t["NDIMC"], t["MDIMC"], 1),
               out.buf, pa, pb, i32(M), i32(N), i32(Mp), i32(Np), i32(Kp),
               i32(shape3[1]), i32(shape3[2]), *(i64(s) for s in pa3), *(i64(s) for s in pb3))


def _tc_operand(x: CLArray, strides: Strides, inner: int, outer: int, ce: int) -> bool:
    """Can gemm_tc.cl read x in place: unit stride along the contiguous axis, and the start,
    the row stride and every batch stride whole 16-byte chunks (ce elements)?"""
    return (inner == 1 and outer > 0 and outer % ce == 0 and x.offset % ce == 0
            and all(s % ce == 0 for s in strides))


def _tc(dev: KernelDevice, a, b, out, M, N, K, shape, astr, bstr) -> bool:
    """C = A @ B on the tensor cores (gemm_tc.cl); False, with the device's tc family switched
    off and a warning, when the kernel does not build on this device."""
    mode = tc.mode(dev, a.dtype)
    t = dev.params[tc.KEYS[mode]]
    opts = tc.options(mode, t)
    try:
        dev.kernel("gemm_tc.cl", "gemm_tc", opts)
    except KernelBuildError as e:
        dev.disable_tc(f"gemm_tc.cl does not build with {opts}: {str(e).strip().splitlines()[0]}")
        return False
    ce = 16 // a.dtype.itemsize
    if _tc_operand(a, astr, a.strides[-1], a.strides[-2], ce):
        pa, a_off, lda, pa_str = a.buf, a.offset, a.strides[-2], astr
    else:  # rows of K elements, padded to whole chunks: [M][Kc]
        lda = round_up(K, ce)
        pa, pa_str = pack_gpu(dev, a, shape, astr, a.strides[-1], a.strides[-2], K, M, lda, M, keep=True)
        a_off = 0
    if _tc_operand(b, bstr, b.strides[-1], b.strides[-2], ce):
        pb, b_off, ldb, pb_str = b.buf, b.offset, b.strides[-2], bstr
    else:  # [K][Nc]
        ldb = round_up(N, ce)
        pb, pb_str = pack_gpu(dev, b, shape, bstr, b.strides[-1], b.strides[-2], N, K, ldb, K, keep=True)
        b_off = 0
    shape3, (pa3, pb3) = pad3(shape, pa_str, pb_str)
    B = int(np.prod(shape3))
    nthr = t["WM"] * t["WN"] * 32
    i64, i32 = np.int64, np.int32
    dev.launch("gemm_tc.cl", "gemm_tc", opts, (cdiv(N, t["BN"]) * nthr, cdiv(M, t["BM"]), B), (nthr, 1, 1),
               out.buf, pa, i64(a_off), pb, i64(b_off), i32(M), i32(N), i32(K), i64(lda), i64(ldb),
               i32(shape3[1]), i32(shape3[2]), *(i64(s) for s in pa3), *(i64(s) for s in pb3))
    return True
