"""Measure a handful of kernel parameter sets on one OpenCL device and keep the fastest."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from xdev.contract import conv_params

from . import params

if TYPE_CHECKING:
    from .device import OpenCLDevice


def _time(dev: OpenCLDevice, fn: Callable[[], Any], repeat: int) -> float:
    fn()
    dev.synchronize()
    return float(np.median(dev.elapsed(fn, repeat)))


def cpu_candidates(vw: int) -> list[tuple[int, int]]:
    """(rows, vectors) micro-tiles that fit the vector registers (32 with AVX-512, else 16)."""
    regs = 32 if vw == 16 else 16
    out = [(mr, nv) for mr in (2, 4, 6, 8, 12, 14) for nv in (1, 2, 3, 4)
           if mr * nv + nv <= regs - 2 and mr * nv >= regs // 2]
    return out


def gpu_candidates(dev: OpenCLDevice) -> list[dict[str, int]]:
    d = dev.cl_device
    out = []
    for tsm, tsn, wptm, wptn in [(64, 64, 4, 4), (128, 128, 8, 8), (128, 64, 8, 4), (64, 128, 4, 8),
                                 (32, 32, 2, 2), (64, 64, 8, 8)]:
        threads = (tsm // wptm) * (tsn // wptn)
        local = 2 * 16 * (tsm + tsn) // 2 * 4
        if threads <= d.max_work_group_size and local <= d.local_mem_size:
            out.append({"TSM": tsm, "TSN": tsn, "TSK": 16, "WPTM": wptm, "WPTN": wptn})
    return out


def tune(dev: OpenCLDevice, quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure candidates for GEMM and conv on `dev`; returns the parameters to store."""
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dev.params.items()}
    repeat = 3 if quick else 5
    n = 512 if quick else 1024
    rng = np.random.default_rng(0)
    # The device's own methods, not the public API: a backend depends on the contract only.
    a = dev.upload(rng.standard_normal((n, n), dtype=np.float32))
    b = dev.upload(rng.standard_normal((n, n), dtype=np.float32))
    convs = [(64, 128, 56), (256, 256, 28)] if quick else [(64, 64, 112), (128, 256, 56), (512, 512, 14)]
    conv_in = [(dev.upload(rng.standard_normal((1, c, h, h), dtype=np.float32)),
                dev.upload(rng.standard_normal((o, c, 3, 3), dtype=np.float32)),
                conv_params((1, c, h, h), (o, c, 3, 3), None, 1, 1, 1, 1))
               for c, o, h in convs]
    found: dict[str, Any] = {}

    def gemm() -> Any:
        return dev.matmul(a, b)

    def convs() -> Any:
        return [dev.conv2d(x, w, None, p, "gemm") for x, w, p in conv_in]

    try:
        dev.params["small_work"] = 0
        if dev.family == "cpu":
            vw = dev.params["gemm"]["VW"]
            for key, run in (("gemm", gemm), ("conv", convs)):
                best = None
                for mr, nv in cpu_candidates(vw):
                    dev.params[key] = {**saved[key], "MR": mr, "NV": nv}
                    t = _time(dev, run, repeat)
                    log(f"{key} MR={mr:2d} NV={nv}: {t * 1e3:8.3f} ms")
                    if best is None or t < best[0]:
                        best = (t, {"MR": mr, "NV": nv})
                found[key] = best[1]
                dev.params[key] = {**saved[key], **best[1]}
        else:
            for key, run in (("gemm_gpu", gemm), ("conv_gpu", convs)):
                best = None
                for cand in gpu_candidates(dev):
                    dev.params[key] = cand
                    try:
                        t = _time(dev, run, repeat)
                    except Exception as e:  # noqa: BLE001 - a candidate the driver rejects is skipped
                        log(f"{key} {cand}: failed ({str(e).splitlines()[0]})")
                        continue
                    log(f"{key} {cand}: {t * 1e3:8.3f} ms")
                    if best is None or t < best[0]:
                        best = (t, cand)
                if best:
                    found[key] = best[1]
                    dev.params[key] = best[1]
    finally:
        dev.params["small_work"] = saved["small_work"]
    return found


def save(dev: OpenCLDevice, found: dict[str, Any]) -> Path:
    path = params.store(dev, found)
    dev.params = params.params_for(dev)
    return path
