"""Measure kernel parameter sets on one OpenCL device against the built-in default; keep a winner beyond noise."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from xdev.contract import conv_params

from . import params

if TYPE_CHECKING:
    from .device import OpenCLDevice


def pick(dev: OpenCLDevice, key: str, run: Callable[[], Any], candidates: list[dict[str, Any]], default: dict[str, Any],
         rounds: int, log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Time the built-in default and every candidate for dev.params[key], interleaved.

    Each candidate is built and run once untimed; then ``rounds`` rounds run every
    candidate once, in alternating order, so load drift hits all alike. Each line shows
    the median and interquartile range. Returns the fastest candidate only when it beats
    the default beyond noise (its median + IQR/2 below the default's median - IQR/2);
    otherwise None: the default stays, and a run-to-run fluke is never stored.
    """
    entries = [("default", dict(default))] + [("", c) for c in candidates if {**default, **c} != default]
    live: list[tuple[str, dict[str, Any]]] = []
    for tag, cand in entries:
        dev.params[key] = {**default, **cand}
        try:
            run()
            dev.synchronize()
        except Exception as e:  # noqa: BLE001 - a candidate the driver rejects is skipped
            log(f"{key} {_fmt(cand)}: failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
            if tag == "default":
                raise
            continue
        live.append((tag, cand))
    samples: list[list[float]] = [[] for _ in live]
    for r in range(rounds):
        order = list(range(len(live))) if r % 2 == 0 else list(range(len(live)))[::-1]
        for i in order:
            dev.params[key] = {**default, **live[i][1]}
            samples[i].extend(dev.elapsed(run, 1))
    stats = []
    for (tag, cand), t in zip(live, samples):
        q1, med, q3 = (float(x) for x in np.percentile(t, [25, 50, 75]))
        stats.append((med, q3 - q1, tag, cand))
        log(f"{key} {_fmt(cand)}: median {med * 1e3:8.3f} ms  spread {(q3 - q1) * 1e3:6.3f} ms"
            + ("  (built-in default, the baseline)" if tag == "default" else ""))
    base = stats[0]
    best = min(stats, key=lambda s: s[0])
    dev.params[key] = {**default}
    if best[2] == "default":
        log(f"{key}: the built-in default is fastest; nothing stored")
        return None
    if best[0] + best[1] / 2 >= base[0] - base[1] / 2:
        log(f"{key}: {_fmt(best[3])} is {base[0] / best[0]:.2f}x the default but within noise; "
            "keeping the default")
        return None
    log(f"{key}: {_fmt(best[3])} beats the default beyond noise ({base[0] / best[0]:.2f}x); chosen")
    dev.params[key] = {**default, **best[3]}
    return best[3]


def _fmt(cand: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cand.items())


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
    """Measure candidates for GEMM and conv on `dev` against the built-in defaults; returns
    the parameters to store: only those that beat the default beyond noise."""
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dev.params.items()}
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

    builtin = params.defaults(dev)
    rounds = 5 if quick else 7
    try:
        dev.params["small_work"] = 0
        if dev.family == "cpu":
            vw = dev.params["gemm"]["VW"]
            for key, run in (("gemm", gemm), ("conv", convs)):
                cands = [{"MR": mr, "NV": nv} for mr, nv in cpu_candidates(vw)]
                choice = pick(dev, key, run, cands, builtin[key], rounds, log)
                if choice is not None:
                    found[key] = choice
        else:
            for key, run in (("gemm_gpu", gemm), ("conv_gpu", convs)):
                choice = pick(dev, key, run, gpu_candidates(dev), builtin[key], rounds, log)
                if choice is not None:
                    found[key] = choice
    finally:
        dev.params["small_work"] = saved["small_work"]
    return found


def save(dev: OpenCLDevice, found: dict[str, Any]) -> Path:
    path = params.store(dev, found)
    dev.params = params.params_for(dev)
    return path
