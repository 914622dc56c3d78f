"""Running the workloads on one device and turning timings into result rows."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import xdev

from .timing import Timing, measure
from .workloads import ConvLayer, matmul_flops


@dataclass
class Settings:
    dtype: np.dtype
    target_s: float  # measured time to aim for per workload (more repeats for short calls)
    repeat: int | None  # fixed repeats instead (--repeat)
    peak: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # device key -> peak


def _rand(shape, dtype, seed) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _time(dev, fn: Callable[[], Any], s: Settings) -> Timing:
    if s.repeat:
        return measure(dev, fn, 0.0, min_repeat=s.repeat, max_repeat=s.repeat)
    return measure(dev, fn, s.target_s)


def _row(dev, s: Settings, op: str, shape: str, algorithm: str, t: Timing, flops: int | None,
         **extra: Any) -> dict[str, Any]:
    peak, _ = s.peak.get(dev.key, (None, ""))
    gflops = flops / t.median_s / 1e9 if flops else None
    return {
        "backend": dev.backend,
        "device": dev.key,
        "device_name": dev.name,
        "op": op,
        "shape": shape,
        "dtype": str(s.dtype),
        "algorithm": algorithm,
        "median_s": t.median_s,
        "spread_s": t.spread_s,
        "repeats": t.repeats,
        "flops": flops,
        "gflops": gflops,
        "peak_fraction": (gflops / peak) if (gflops and peak) else None,
        "build_s": t.build_s,
        "first_call_s": t.first_s,
        "speedup_vs_numpy": None,
        **extra,
    }


def matmul_row(dev, s: Settings, M: int, K: int, N: int, kind: str) -> dict[str, Any]:
    a = xdev.asarray(_rand((M, K), s.dtype, 1), backend=dev.key)
    b = xdev.asarray(_rand((K, N), s.dtype, 2), backend=dev.key)
    t = _time(dev, lambda: xdev.matmul(a, b), s)
    name = dev.backend if dev.backend != "cuda" else "cuBLAS"
    return _row(dev, s, "matmul", f"{M}x{K}x{N}", name, t, matmul_flops(M, N, K), M=M, K=K, N=N, kind=kind)


def conv_row(dev, s: Settings, layer: ConvLayer, algorithm: str) -> dict[str, Any]:
    x = xdev.asarray(_rand((layer.N, layer.C, layer.H, layer.H), s.dtype, 3), backend=dev.key)
    w = xdev.asarray(_rand((layer.O, layer.C, 3, 3), s.dtype, 4) * 0.1, backend=dev.key)
    b = xdev.asarray(_rand((layer.O,), s.dtype, 5), backend=dev.key)
    ran = xdev.conv2d(x, w, b, padding=1, algorithm=algorithm).algorithm
    t = _time(dev, lambda: xdev.conv2d(x, w, b, padding=1, algorithm=algorithm), s)
    # CUDA rows say what numerics ran: strict float32, TF32 or float16; Winograd/FFT; layout.
    numerics = getattr(dev, "conv_numerics", None)
    extra = numerics(ran, s.dtype) if numerics is not None else {}
    return _row(dev, s, "conv2d", layer.shape, ran, t, layer.flops, layer=layer.name, batch=layer.N,
                geometry=f"{layer.C}>{layer.O}@{layer.H}", **extra)


def conv_total(rows: list[dict[str, Any]], dev, s: Settings) -> dict[str, Any]:
    """VGG-16 total for one algorithm: per-layer medians and spreads summed."""
    t = Timing(sum(r["median_s"] for r in rows), sum(r["spread_s"] for r in rows),
               min(r["repeats"] for r in rows), sum(r["build_s"] for r in rows),
               sum(r["first_call_s"] for r in rows))
    flops = sum(r["flops"] for r in rows)
    extra = {k: rows[0][k] for k in ("numerics", "numeric_mode", "winograd_fft_allowed", "layout") if k in rows[0]}
    return _row(dev, s, "conv2d", "VGG-16 conv layers", rows[0]["algorithm"], t, flops,
                layer="total", batch=rows[0]["batch"], **extra)


def transfer_rows(dev, s: Settings, nbytes: int) -> list[dict[str, Any]]:
    n = max(1, nbytes // s.dtype.itemsize)
    out = []
    kinds = [("pageable", _rand((n,), s.dtype, 6))]
    pinned = dev.pinned_empty((n,), s.dtype)
    if pinned is not None:
        pinned[...] = kinds[0][1]
        kinds.append(("pinned", pinned))
    for kind, host in kinds:
        t = _time(dev, lambda: xdev.asarray(host, backend=dev.key), s)
        out.append(_row(dev, s, "transfer", f"{n * s.dtype.itemsize} B", f"host-to-device {kind}", t, None,
                        bytes=n * s.dtype.itemsize, gbps=n * s.dtype.itemsize / t.median_s / 1e9))
    x = xdev.asarray(kinds[0][1], backend=dev.key)
    t = _time(dev, lambda: x.numpy(), s)
    out.append(_row(dev, s, "transfer", f"{n * s.dtype.itemsize} B", "device-to-host pageable", t, None,
                    bytes=n * s.dtype.itemsize, gbps=n * s.dtype.itemsize / t.median_s / 1e9))
    return out


def roundtrip_rows(dev, s: Settings, n: int) -> list[dict[str, Any]]:
    """matmul alone vs upload + matmul + download: where the transfer dominates."""
    ha, hb = _rand((n, n), s.dtype, 7), _rand((n, n), s.dtype, 8)
    a, b = xdev.asarray(ha, backend=dev.key), xdev.asarray(hb, backend=dev.key)
    compute = _time(dev, lambda: xdev.matmul(a, b), s)
    full = _time(dev, lambda: xdev.matmul(xdev.asarray(ha, backend=dev.key),
                                          xdev.asarray(hb, backend=dev.key)).numpy(), s)
    flops = matmul_flops(n, n, n)
    share = max(0.0, 1.0 - compute.median_s / full.median_s)
    return [
        _row(dev, s, "roundtrip", f"{n}x{n}x{n}", "compute only", compute, flops, transfer_share=0.0),
        _row(dev, s, "roundtrip", f"{n}x{n}x{n}", "upload+compute+download", full, flops, transfer_share=share),
    ]


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Throughput relative to the NumPy backend on the same op, shape and dtype."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["op"], r.get("layer") or r["shape"], r["dtype"], r["algorithm"] if r["op"] == "roundtrip" else "")

    base = {key(r): r["gflops"] for r in results if r["backend"] == "numpy" and r["gflops"]}
    for r in results:
        ref = base.get(key(r))
        if ref and r["gflops"]:
            r["speedup_vs_numpy"] = r["gflops"] / ref
