"""Running the workloads on one device and turning timings into result rows."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import xdev

from .noise import Case, Settler, measure_interleaved, overlaps, ratio
from .sides import BASELINE, Side, isa_of
from .timing import Timing
from .workloads import ConvLayer, matmul_flops


@dataclass
class Settings:
    dtype: np.dtype
    target_s: float  # measured time to aim for per workload (more repeats for short calls)
    repeat: int | None  # fixed repeats instead (--repeat)
    peak: dict[str, tuple[float | None, str]] = field(default_factory=dict)  # device key -> peak
    # Waits between blocks of two CPU sides until their worker threads stop spinning (noise.Settler).
    settle: Settler = field(default_factory=Settler)
    announce: Callable[[str], None] | None = None  # prints "building kernels ..." once per device
    announced: set[str] = field(default_factory=set)
    activity: Callable[[str], None] | None = None  # told what is being measured now (progress lines)


def _rand(shape, dtype, seed) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _time(dev, fn: Callable[[], Any], s: Settings) -> Timing:
    """One call timed on one device alone (for ops that measure themselves)."""
    return measure_interleaved([Case(dev, fn)], s.target_s, s.repeat)[0]


def peak_fields(gflops: float | None, peak: float | None) -> dict[str, Any]:
    """A row's share of its device's peak; above 100% is impossible: a timing or peak error,
    flagged, not hidden."""
    return {"peak_fraction": (gflops / peak) if (gflops and peak) else None,
            "peak_error": (gflops and peak and gflops > peak and
                           f"{100 * gflops / peak:.0f}% of peak is impossible: the timing or the peak "
                           "(calibrated on a busy machine?) is wrong") or None}


def _row(dev: Side | Any, s: Settings, op: str, shape: str, algorithm: str, t: Timing, flops: int | None,
         **extra: Any) -> dict[str, Any]:
    """A result row of ``dev`` (a Side, or an xdev Device for workloads that measure one)."""
    peak, _ = s.peak.get(dev.key, (None, ""))
    gflops = flops / t.median_s / 1e9 if flops else None
    isa, isa_source = isa_of(dev)  # every CPU row names the instruction set its code ran
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
        **peak_fields(gflops, peak),
        "build_s": t.build_s,
        "first_call_s": t.first_s,
        "speedup_vs_numpy": None,
        "speedup_spread": None,
        "within_noise": None,
        "reference": isinstance(dev, Side) and dev.reference,
        **({"isa": isa, "isa_source": isa_source} if dev.is_cpu else {}),
        **extra,
    }


Finish = Callable[[list[Timing]], list[dict[str, Any]]]


@dataclass
class Workload:
    """One thing to measure on every device: the devices' calls are timed interleaved.

    ``prepare(side)`` uploads the operands and returns (calls to time, finish), where
    finish turns their Timings into result rows; it returns None when the workload does
    not apply to that side (e.g. transfers: a yardstick has no xdev device).
    """
    section: str
    label: str
    prepare: Callable[[Side], tuple[list[Callable[[], Any]], Finish] | None] | None = None
    direct: Callable[[Any], list[dict[str, Any]]] | None = None  # measures one xdev Device itself
    scope: Callable[[], AbstractContextManager[Any]] | None = None  # held while it is prepared and timed


def run_workload(w: Workload, sides: list[Side], s: Settings) -> list[dict[str, Any]]:
    with (w.scope() if w.scope else nullcontext()):
        return _run_workload(w, sides, s)


def _run_workload(w: Workload, sides: list[Side], s: Settings) -> list[dict[str, Any]]:
    built = {side.key: side.build_seconds for side in sides if side.key not in s.announced}
    rows: list[dict[str, Any]] = []
    tell = s.activity or (lambda what: None)
    if w.direct is not None:
        for i, side in enumerate(x for x in sides if x.device is not None):
            if i and side.is_cpu:
                s.settle()  # the previous device's worker threads go idle first
            tell(f"{w.label} on {side.key}")
            rows.extend(w.direct(side.device))
    else:
        assert w.prepare is not None
        tell(f"{w.label}: preparing")
        prepared = [(side, w.prepare(side)) for side in sides]
        prepared = [(side, p) for side, p in prepared if p is not None]
        cases = [Case(side, fn, w.label) for side, (fns, _) in prepared for fn in fns]
        cpu_sides = {id(c.dev) for c in cases if c.dev.is_cpu}
        timings = measure_interleaved(cases, s.target_s, s.repeat, settle=s.settle if len(cpu_sides) > 1 else None,
                                      on_block=lambda c, r: tell(f"{w.label} on {c.dev.key}, round {r + 1}"))
        i = 0
        for side, (fns, finish) in prepared:
            rows.extend(finish(timings[i:i + len(fns)]))
            i += len(fns)
    if s.announce:  # once per side: the pause its first workload took to build kernels
        for side in sides:
            b = side.build_seconds - built.get(side.key, side.build_seconds)
            if b > 0 and side.key not in s.announced:
                s.announced.add(side.key)
                s.announce(f"first use of {side.key}: {b:.2f} s building kernels for {side.name}, once "
                           "(reported in 'build s', never in the timings)")
    return rows


def matmul_case(s: Settings, M: int, K: int, N: int, kind: str):
    def prepare(side: Side):
        fn = side.matmul_fn(_rand((M, K), s.dtype, 1), _rand((K, N), s.dtype, 2))

        def finish(t: list[Timing]):
            return [_row(side, s, "matmul", f"{M}x{K}x{N}", side.matmul_label, t[0], matmul_flops(M, N, K),
                         M=M, K=K, N=N, kind=kind, **side.matmul_numerics(s.dtype))]
        return [fn], finish
    return prepare


# The GPU's reduced-precision modes, where cuBLAS and cuDNN use tensor cores: (mode, dtype,
# whether float32 may run as TF32).
TENSOR_MODES = (("tf32", np.dtype(np.float32), True), ("fp16", np.dtype(np.float16), False))


def tensor_case(s: Settings, n: int, mode: str, dtype: np.dtype):
    """n^3 matmul in a reduced-precision mode on the GPU sides (CPU sides: none). Its rows'
    algorithm is "<matmul label> <mode>" (e.g. "cuBLAS tf32"), kind "tensor-cores", with the
    numerics each side really ran (an OpenCL device without tensor cores says FMA units)."""
    t = Settings(dtype, s.target_s, s.repeat)  # no peaks: the tables hold FMA-unit (float32) rates only

    def prepare(side: Side):
        if side.is_cpu:
            return None
        if side.device is not None:
            try:
                side.device.check_dtype(dtype)
            except TypeError:
                return None
        fn = side.matmul_fn(_rand((n, n), dtype, 1), _rand((n, n), dtype, 2))
        numerics = side.matmul_numerics(dtype)  # in the workload's numeric mode

        def finish(times: list[Timing]):
            return [_row(side, t, "matmul", f"{n}x{n}x{n}", f"{side.matmul_label} {mode}", times[0],
                         matmul_flops(n, n, n), M=n, K=n, N=n, kind="tensor-cores", mode=mode, **numerics)]
        return [fn], finish
    return prepare


def conv_case(s: Settings, layer_of: Callable[[Side], ConvLayer], algorithms: Callable[[Side], list[str]]):
    def prepare(side: Side):
        layer = layer_of(side)
        hx = _rand((layer.N, layer.C, layer.H, layer.H), s.dtype, 3)
        hw = _rand((layer.O, layer.C, 3, 3), s.dtype, 4) * 0.1
        hb = _rand((layer.O,), s.dtype, 5)
        calls = side.conv_calls(hx, hw, hb, algorithms(side))
        # What numerics each ran (e.g. CUDA: strict float32, TF32 or float16; Winograd/FFT; layout),
        # read right after its first call.
        numerics = [side.conv_numerics(ran, s.dtype) for ran, *_ in calls]

        def finish(t: list[Timing]):
            t = [Timing(ti.median_s, ti.spread_s, ti.repeats, ti.build_s + fb, ft)
                 for ti, (_, _, fb, ft) in zip(t, calls)]
            return [_row(side, s, "conv2d", layer.shape, ran, ti, layer.flops, layer=layer.name, batch=layer.N,
                         geometry=f"{layer.C}>{layer.O}@{layer.H}", **num)
                    for (ran, *_), ti, num in zip(calls, t, numerics)]
        return [fn for _, fn, _, _ in calls], finish
    return prepare


def arrange(results: list[dict[str, Any]], settings: Settings, devices: dict[str, Side]) -> list[dict[str, Any]]:
    """Rows grouped as the tables read them: by op, then device, then algorithm (order of
    first appearance; workloads keep their order inside), with a VGG-16 'total' row after
    each (device, algorithm)'s layers."""
    first: dict[tuple, int] = {}
    for r in results:
        first.setdefault(("op", r["op"]), len(first))
        first.setdefault(("dev", r["op"], r["device"]), len(first))
        first.setdefault(("algo", r["op"], r["device"], r["algorithm"]), len(first))
    idx = {id(r): i for i, r in enumerate(results)}

    def key(r: dict[str, Any]) -> tuple:
        algo = first[("algo", r["op"], r["device"], r["algorithm"])] if r["op"] == "conv2d" else 0
        return (first[("op", r["op"])], first[("dev", r["op"], r["device"])], algo, idx[id(r)])

    out: list[dict[str, Any]] = []
    group: list[dict[str, Any]] = []
    for r in sorted(results, key=key) + [{"op": None}]:
        if group and (r["op"] != "conv2d" or (r["device"], r["algorithm"]) != (group[0]["device"], group[0]["algorithm"])):
            out.append(conv_total(group, devices[group[0]["device"]], settings))
            group = []
        if r["op"] == "conv2d" and r.get("layer") != "total":
            group.append(r)
        if r["op"] is not None:
            out.append(r)
    return out


def conv_total(rows: list[dict[str, Any]], dev: Side, s: Settings) -> dict[str, Any]:
    """VGG-16 total for one algorithm: per-layer medians and spreads summed."""
    t = Timing(sum(r["median_s"] for r in rows), sum(r["spread_s"] for r in rows),
               min(r["repeats"] for r in rows), sum(r["build_s"] for r in rows),
               sum(r["first_call_s"] for r in rows))
    flops = sum(r["flops"] for r in rows)
    extra = {k: rows[0][k] for k in ("numerics", "numeric_mode", "winograd_fft_allowed", "layout") if k in rows[0]}
    return _row(dev, s, "conv2d", "VGG-16 conv layers", rows[0]["algorithm"], t, flops,
                layer="total", batch=rows[0]["batch"], **extra)


def transfer_case(s: Settings, nbytes: int):
    def prepare(side: Side):
        dev = side.device
        if dev is None:  # a yardstick: xdev's transfers only
            return None
        n = max(1, nbytes // s.dtype.itemsize)
        nb = n * s.dtype.itemsize
        kinds = [("pageable", _rand((n,), s.dtype, 6))]
        pinned = dev.pinned_empty((n,), s.dtype)
        if pinned is not None:
            pinned[...] = kinds[0][1]
            kinds.append(("pinned", pinned))
        fns = [lambda host=host: xdev.asarray(host, backend=dev.key) for _, host in kinds]
        x = xdev.asarray(kinds[0][1], backend=dev.key)
        fns.append(lambda: x.numpy())
        names = [f"host-to-device {k}" for k, _ in kinds] + ["device-to-host pageable"]

        def finish(t: list[Timing]):
            return [_row(side, s, "transfer", f"{nb} B", name, ti, None, bytes=nb, gbps=nb / ti.median_s / 1e9)
                    for name, ti in zip(names, t)]
        return fns, finish
    return prepare


def roundtrip_case(s: Settings, n: int):
    """matmul alone vs upload + matmul + download: where the transfer dominates."""
    def prepare(side: Side):
        dev = side.device
        if dev is None:
            return None
        ha, hb = _rand((n, n), s.dtype, 7), _rand((n, n), s.dtype, 8)
        a, b = xdev.asarray(ha, backend=dev.key), xdev.asarray(hb, backend=dev.key)
        fns = [lambda: xdev.matmul(a, b),
               lambda: xdev.matmul(xdev.asarray(ha, backend=dev.key), xdev.asarray(hb, backend=dev.key)).numpy()]

        def finish(t: list[Timing]):
            compute, full = t
            flops = matmul_flops(n, n, n)
            # Not clamped: a negative share means the round trip measured faster than the
            # compute alone, i.e. the difference is noise; the flag says so.
            share = 1.0 - compute.median_s / full.median_s
            noise = overlaps(compute.median_s, compute.spread_s, full.median_s, full.spread_s)
            share_spread = (compute.median_s / full.median_s) * (  # a half-width, as ratio() gives
                (compute.spread_s / 2 / compute.median_s) ** 2 + (full.spread_s / 2 / full.median_s) ** 2) ** 0.5
            return [
                _row(side, s, "roundtrip", f"{n}x{n}x{n}", "compute only", compute, flops, transfer_share=0.0),
                _row(side, s, "roundtrip", f"{n}x{n}x{n}", "upload+compute+download", full, flops,
                     transfer_share=share, transfer_share_spread=share_spread, transfer_within_noise=noise),
            ]
        return fns, finish
    return prepare


def add_speedups(results: list[dict[str, Any]]) -> None:
    """Throughput relative to the NumPy backend on the same op, shape and dtype (>1: faster),
    with its spread and whether the two intervals overlap ("within noise")."""
    def key(r: dict[str, Any]) -> tuple:
        return (r["op"], r.get("layer") or r["shape"], r["dtype"], r["algorithm"] if r["op"] == "roundtrip" else "")

    base = {key(r): r for r in results if r["backend"] == BASELINE and r["gflops"]}
    for r in results:
        ref = base.get(key(r))
        if ref and r["gflops"]:
            if r is ref:
                r["speedup_vs_numpy"], r["speedup_spread"], r["within_noise"] = 1.0, 0.0, True
                continue
            # Seconds per FLOP on both sides: batches may differ (VGG-16 on CPUs and GPUs).
            fa, fb = ref["flops"], r["flops"]
            r["speedup_vs_numpy"], r["speedup_spread"], r["within_noise"] = ratio(
                ref["median_s"] / fa, ref["spread_s"] / fa, r["median_s"] / fb, r["spread_s"] / fb)
