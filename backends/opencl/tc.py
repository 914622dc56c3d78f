"""The tensor-core GEMM family ("tc", gemm_tc.cl): where it may run, its numeric modes,
its parameters and the tuner's search space. No PyOpenCL here: the device and the GEMM
module call in, and the tests load this module alone.

Where: NVIDIA's OpenCL platform, a GPU whose compute capability (cl_nv_device_attribute_query)
is 8.0 or higher, and kernels that build and pass the device proof; everywhere else the
other families run, unchanged. Numeric modes follow the CUDA backend: float16 inputs run
on the tensor cores (float16 products, float32 accumulation, float16 result); float32 only
when the user asks for TF32 (XDEV_OPENCL_TF32, or XDEV_CUDA_TF32 when that is unset).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xdev.contract import env

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
MIN_CC = (8, 0)  # mma.sync m16n8k8 .tf32, cp.async, ldmatrix: sm_80
KEYS = {32: "gemm_tc32", 16: "gemm_tc16"}  # params key per TC_MODE
NAMES = ("BM", "BN", "BK", "WM", "WN", "STAGES", "ASYNC", "LDSM", "GM", "RS")

# 128 x 128 tiles of 4 warps (64 x 64 each: 128 accumulators, about 250 registers per
# work-item, so two work-groups share an SM's 64K registers), three cp.async stages of
# 16 KiB: 48 KiB, what NVIDIA's OpenCL gives a work-group. TF32 slices are 16 deep (2 mma
# k-steps), float16 32. On an H200 (2026-12-04, GEMM 4096^3) this was the fastest of the
# variants tried in both modes, 1.2x (float16) and 1.3x (TF32) the 8-warp 64 x 32 tiling.
DEFAULTS: dict[str, dict[str, int]] = {
    "gemm_tc32": {"BM": 128, "BN": 128, "BK": 16, "WM": 2, "WN": 2, "STAGES": 3, "ASYNC": 1, "LDSM": 1, "GM": 8,
                  "RS": 0},
    "gemm_tc16": {"BM": 128, "BN": 128, "BK": 32, "WM": 2, "WN": 2, "STAGES": 3, "ASYNC": 1, "LDSM": 1, "GM": 8,
                  "RS": 0},
}


def derive(props: dict[str, Any]) -> tuple[dict[str, dict[str, int]], str]:
    """Both modes' parameters from a GPU's properties (params.gpu_properties): the DEFAULTS
    tiling with as many cp.async stages (up to 3) as its local memory holds, else 64 x 64
    tiles of 4 warps; and the line that says so (params' ``source``)."""
    out = {}
    for mode_, key in KEYS.items():
        base = DEFAULTS[key]
        t = next((c for c in ({**base, "STAGES": st} for st in (3, 2))
                  if valid(mode_, c, props["max_work_group"], props["local_mem"])), None)
        if t is None:
            small = {**base, "BM": 64, "BN": 64, "WM": 2, "WN": 2}
            t = _deepest(mode_, small, props["max_work_group"], props["local_mem"]) or small
        out[key] = t
    st = out[KEYS[16]]
    why = (f"derived: {props['local_mem'] // 1024} KiB local memory -> {st['BM']} x {st['BN']} tiles, "
           f"{st['STAGES']} cp.async stages")
    return out, why


# Valid ranges of each value (params.validate_entry checks tuned entries against them).
RANGES: dict[str, tuple[int, int]] = {"BM": (16, 256), "BN": (16, 256), "BK": (8, 128), "WM": (1, 8), "WN": (1, 8),
                                      "STAGES": (2, 5), "ASYNC": (0, 1), "LDSM": (0, 1), "GM": (1, 64),
                                      "RS": (0, 2)}


def support(platform_name: str, device: Any) -> str | None:
    """None if `device` can run the tc family, else why not (for xdev.info).

    `device` is a pyopencl.Device or anything with its attribute names (tests fake one)."""
    if "nvidia" not in platform_name.lower():
        return f"tensor-core GEMM needs NVIDIA's OpenCL platform (this is {platform_name.strip()!r})"
    exts = str(getattr(device, "extensions", "")).split()
    if "cl_nv_device_attribute_query" not in exts:
        return "the device does not report its compute capability (no cl_nv_device_attribute_query)"
    try:
        cc = (int(device.compute_capability_major_nv), int(device.compute_capability_minor_nv))
    except Exception as e:  # noqa: BLE001 - a driver that lists the extension but fails the query
        return f"the compute-capability query failed ({type(e).__name__}: {e})"
    if cc < MIN_CC:
        return (f"compute capability {cc[0]}.{cc[1]} has no TF32/float16 mma.sync with cp.async "
                f"(needs {MIN_CC[0]}.{MIN_CC[1]}+: A100, RTX 30xx, H100 and newer)")
    return None


def tf32_requested() -> bool:
    """The user's TF32 switch for OpenCL: XDEV_OPENCL_TF32, else XDEV_CUDA_TF32."""
    return env.opencl_tf32()


def mode(dev: Any, dtype: np.dtype) -> int | None:
    """TC_MODE for a matmul of `dtype` on `dev` (32: TF32, 16: float16), or None.

    `dev.tc_reason` is None on a device that runs the family; `dev.force_tf32` (True/False,
    None: ask the environment) lets the proof and the tuner choose the mode themselves."""
    if getattr(dev, "tc_reason", "no") is not None or getattr(dev, "family", "") != "gpu":
        return None
    dtype = np.dtype(dtype)
    if dtype == F16:
        return 16
    if dtype == F32:
        forced = getattr(dev, "force_tf32", None)
        return 32 if (tf32_requested() if forced is None else forced) else None
    return None


def options(mode_: int, t: dict[str, Any]) -> dict[str, int]:
    """The -D options of gemm_tc.cl for mode `mode_` and parameters `t`."""
    return {"TC_MODE": int(mode_), **{k: int(t[k]) for k in NAMES}}


def local_bytes(mode_: int, t: dict[str, int]) -> int:
    """Shared memory of one work-group: STAGES slices of A (BM x BK) and B (BK x BN)."""
    es = 4 if mode_ == 32 else 2
    return t["STAGES"] * (t["BM"] * t["BK"] + t["BK"] * t["BN"]) * es


def valid(mode_: int, t: dict[str, int], max_threads: int = 1024, local_mem: int = 48 * 1024) -> bool:
    """The conditions gemm_tc.cl checks with #error, plus the device's limits and a register
    budget (at most 128 float accumulators per work-item)."""
    es = 4 if mode_ == 32 else 2
    ce, ks = 16 // es, (8 if mode_ == 32 else 16)
    if any(not RANGES[k][0] <= t[k] <= RANGES[k][1] for k in NAMES):
        return False
    nthr = t["WM"] * t["WN"] * 32
    if t["BM"] % (16 * t["WM"]) or t["BN"] % (8 * t["WN"]) or t["BK"] % ks or t["BK"] % ce or t["BN"] % ce:
        return False
    ra, rb = t["BK"] // ce, t["BN"] // ce
    mt, nt = t["BM"] // t["WM"] // 16, t["BN"] // t["WN"] // 8
    achunks, bchunks = t["BM"] * ra, t["BK"] * rb
    return (achunks % nthr == 0 and bchunks % nthr == 0 and achunks >= nthr and bchunks >= nthr
            and (mode_ == 32 or t["RS"] == 0)
            and ra & (ra - 1) == 0 and rb % 8 == 0 and not (mode_ == 16 and nt % 2)
            and (t["ASYNC"] or t["STAGES"] == 2) and nthr <= max_threads
            and mt * nt * 4 <= 128 and local_bytes(mode_, t) <= local_mem)


# ---- the tuner's search space ---------------------------------------------------------------
# Stage 1: block tiles and warp grids (the likeliest first: CUTLASS's Ampere GEMMs use
# 128 x 128 or 128 x 256 tiles of 4-8 warps with 64 x 64 or 64 x 32 warp tiles); each with
# the deepest ring of cp.async stages that fits the 48 KiB. Stage 2 walks from the best one
# parameter at a time: slice depth, stages, fragment loads, the copy path, launch order.
TC_SHAPES = [  # (BM, BN, WM, WN)
    (128, 128, 2, 2), (128, 128, 2, 4), (128, 128, 4, 2), (128, 256, 2, 4), (256, 128, 4, 2),
    (128, 64, 2, 2), (64, 128, 2, 2), (64, 64, 2, 2), (128, 256, 4, 2), (256, 64, 4, 1),
]
TC_STEPS = [("BK", None), ("STAGES", (2, 3, 4, 5)), ("RS", (0, 1, 2)), ("LDSM", (1, 0)), ("ASYNC", (1, 0)),
            ("GM", (8, 1, 4, 16))]


def _deepest(mode_: int, t: dict[str, int], max_threads: int, local_mem: int) -> dict[str, int] | None:
    for stages in (4, 3, 2):
        c = {**t, "STAGES": stages}
        if valid(mode_, c, max_threads, local_mem):
            return c
    return None


def shapes(mode_: int, max_threads: int, local_mem: int) -> list[dict[str, int]]:
    """Stage 1 candidates: one per valid block/warp shape, at the mode's slice depth."""
    bk = 16 if mode_ == 32 else 32
    out = []
    for bm, bn, wm, wn in TC_SHAPES:
        t = _deepest(mode_, {"BM": bm, "BN": bn, "BK": bk, "WM": wm, "WN": wn, "STAGES": 2, "ASYNC": 1,
                             "LDSM": 1, "GM": 8, "RS": 0}, max_threads, local_mem)
        if t is not None:
            out.append(t)
    return out


def neighbours(mode_: int, best: dict[str, int], step: tuple[str, tuple | None], max_threads: int,
               local_mem: int) -> list[dict[str, int]]:
    """Stage 2: `best` with one parameter changed (a shallower or deeper slice keeps the
    deepest ring of stages that fits; the register-staged copy path has two stages)."""
    name, values = step
    if name == "BK":
        values = (8, 16, 32) if mode_ == 32 else (16, 32, 64)
    out = []
    for v in values:
        t = {**best, name: v}
        if name == "BK":
            t = _deepest(mode_, t, max_threads, local_mem) or t
        if name == "ASYNC" and v == 0:
            t["STAGES"] = 2
        if t != best and valid(mode_, t, max_threads, local_mem) and t not in out:
            out.append(t)
    return out
