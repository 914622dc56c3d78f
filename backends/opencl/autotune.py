"""Measure kernel parameter sets on one OpenCL device against the built-in default; keep a winner beyond noise."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from xdev.contract import conv_params

from . import isa, params, tc
from .gemm import xl_valid

CPU_BUDGET_S = 120.0  # screening of the CPU micro-tiles (GEMM 40%, conv the rest)

if TYPE_CHECKING:
    from .device import OpenCLDevice


def _time(dev: OpenCLDevice, fn: Callable[[], Any], repeat: int) -> float:
    fn()
    dev.synchronize()
    return float(np.median(dev.elapsed(fn, repeat)))


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


def cpu_candidates(registers: int, lanes: int | None, vw: int) -> list[tuple[int, int]]:
    """(rows, vectors) micro-tiles whose accumulators, B vectors and A broadcast fit the
    target's vector registers (counted at the kernel's width) and use at least half of
    them; the likeliest winners (3/4 of the registers as accumulators) first."""
    regs = registers * lanes // vw if lanes and lanes < vw else registers
    out = [(mr, nv) for nv in (1, 2, 3, 4) for mr in range(1, 17)
           if mr * nv + nv + 1 <= regs and mr * nv >= regs // 2 and (nv > 1 or mr % 2 == 0)]
    return sorted(out, key=lambda t: (abs(t[0] * t[1] - 0.75 * regs), abs(t[1] - 2)))


def screen(dev: OpenCLDevice, key: str, run: Callable[[], Any], candidates: list[dict[str, Any]],
           default: dict[str, Any], deadline: float, keep: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Time each candidate briefly (best of 3) until `deadline`; the `keep` fastest go on
    to pick()'s interleaved rounds against the default."""
    timed = []
    for cand in candidates:
        if time.monotonic() > deadline:
            log(f"{key}: time budget reached after {len(timed)} of {len(candidates)} candidates")
            break
        dev.params[key] = {**default, **cand}
        try:
            run()
            dev.synchronize()
            sec = min(dev.elapsed(run, 3))
        except Exception as e:  # noqa: BLE001 - a candidate the driver rejects is skipped
            log(f"{key} {_fmt(cand)}: failed ({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})")
            continue
        log(f"{key} {_fmt(cand)}: {sec * 1e3:8.3f} ms (screening)")
        timed.append((sec, cand))
    dev.params[key] = {**default}
    return [c for _, c in sorted(timed, key=lambda x: x[0])[:keep]]


# ---- the GPU (xl) search space -----------------------------------------------------------
# Stage 1 tries work-group shapes (tile MWG x NWG, MDIMC x NDIMC work-items, hence the
# per-work-item register tile); stage 2 walks from the best one parameter at a time
# (K slice, vector widths, local padding, double buffering) while the time budget lasts.
# Ordered so the likeliest winners come first: CLBlast's tuner found 128x128 tiles of
# 16x16 work-items with float4 loads best on an H100.
XL_SHAPES = [  # (MWG, NWG, MDIMC, NDIMC)
    (128, 128, 16, 16), (128, 128, 16, 8), (128, 128, 8, 16), (64, 64, 8, 8),
    (128, 64, 16, 8), (64, 128, 8, 16), (64, 64, 16, 16), (128, 128, 32, 8),
    (128, 128, 8, 32), (64, 128, 16, 16), (128, 64, 16, 16), (32, 64, 8, 8),
    (64, 32, 8, 8), (32, 32, 8, 8), (256, 128, 32, 16), (128, 256, 16, 32),
]
XL_STEPS = [
    ("KWG", (16, 32, 8)),
    ("VW", ((4, 4), (2, 2), (1, 1), (4, 2), (2, 4), (8, 8))),
    ("PAD", (0, 4, 8)),
    ("DB", (1, 0)),
]


def xl_shapes(dev: OpenCLDevice) -> list[dict[str, int]]:
    """Stage 1: one candidate per valid work-group shape, float4 (or the widest valid) loads."""
    d = dev.cl_device
    out = []
    for mwg, nwg, mdimc, ndimc in XL_SHAPES:
        for vw in (4, 2, 1):
            t = {"MWG": mwg, "NWG": nwg, "KWG": 16, "MDIMC": mdimc, "NDIMC": ndimc,
                 "VWM": vw, "VWN": vw, "PAD": 0, "DB": 1}
            if xl_valid(t, int(d.max_work_group_size), int(d.local_mem_size)):
                out.append(t)
                break
    return out


def xl_neighbours(dev: OpenCLDevice, best: dict[str, int], step: tuple[str, tuple]) -> list[dict[str, int]]:
    """Stage 2: `best` with one parameter (or the vector-width pair) changed."""
    d = dev.cl_device
    name, values = step
    out = []
    for v in values:
        t = dict(best)
        if name == "VW":
            t["VWM"], t["VWN"] = v
        else:
            t[name] = v
        if t != best and xl_valid(t, int(d.max_work_group_size), int(d.local_mem_size)):
            out.append(t)
    return out


def _fmt(t: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in t.items())


def verify_gemm(dev: OpenCLDevice) -> str | None:
    """None if the current xl parameters multiply a ragged, batched, transposed problem
    within the design's worst-case bound; else what went wrong (a miscompiled variant must
    not win by being fast)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, 77, 131), dtype=np.float32)
    b = rng.standard_normal((131, 203), dtype=np.float32)
    xa = dev.transpose(dev.upload(np.ascontiguousarray(a.transpose(0, 2, 1))), (0, 2, 1))
    c = dev.download(dev.matmul(xa, dev.upload(b))).astype(np.float64)
    ref = a.astype(np.float64) @ b
    bound = 133 * 2.0**-24 * (np.abs(a).astype(np.float64) @ np.abs(b)) + 2.0**-24 * np.abs(ref)
    bad = np.abs(c - ref) > bound
    return f"{int(bad.sum())} of {bad.size} outputs outside the error bound" if bad.any() else None


def verify_conv(dev: OpenCLDevice) -> str | None:
    """Like verify_gemm for the conv kernel, two groups with bias-free outputs: stride 2 with
    dilation 2 (the general taps), then stride 1 (the 3 x 3 taps unrolled at build time)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 19, 23), dtype=np.float32)
    w = rng.standard_normal((10, 3, 3, 3), dtype=np.float32)
    for s, d in ((2, 2), (1, 1)):
        p = conv_params(x.shape, w.shape, None, s, d, d, 2)
        y = dev.download(dev.conv2d(dev.upload(x), dev.upload(w), None, p, "gemm")[0]).astype(np.float64)
        # float64 reference by explicit taps
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (d, d), (d, d)))
        ref = np.zeros(y.shape)
        mag = np.zeros(y.shape)
        Ho, Wo = y.shape[2:]
        for g in range(2):
            for i in range(3):
                for j in range(3):
                    patch = xp[:, g * 3:(g + 1) * 3, d * i: d * i + s * Ho: s, d * j: d * j + s * Wo: s]
                    wt = w[g * 5:(g + 1) * 5, :, i, j].astype(np.float64)
                    ref[:, g * 5:(g + 1) * 5] += np.einsum("nchw,oc->nohw", patch, wt)
                    mag[:, g * 5:(g + 1) * 5] += np.einsum("nchw,oc->nohw", np.abs(patch), np.abs(wt))
        bad = np.abs(y - ref) > 29 * 2.0**-24 * mag + 2.0**-24 * np.abs(ref)
        if bad.any():
            return f"stride {s}, dilation {d}: {int(bad.sum())} of {bad.size} outputs outside the error bound"
    return None


def verify_tc(dev: OpenCLDevice, dtype: np.dtype) -> str | None:
    """Like verify_gemm for the tensor-core GEMM in the mode of `dtype` (float16, or TF32 for
    float32): a ragged, batched product with a transposed (packed) and an in-place operand,
    within the mode's bound (TF32: unit roundoff 2^-11)."""
    rng = np.random.default_rng(3)
    dtype = np.dtype(dtype)
    a = rng.standard_normal((2, 77, 131)).astype(dtype)
    b = rng.standard_normal((131, 203)).astype(dtype)
    xa = dev.transpose(dev.upload(np.ascontiguousarray(a.transpose(0, 2, 1))), (0, 2, 1))
    c = dev.download(dev.matmul(xa, dev.upload(b))).astype(np.float64)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    u_acc = 2.0**-11 if dtype == np.float32 else 2.0**-24
    u_out = 2.0**-24 if dtype == np.float32 else 2.0**-11
    bound = 133 * u_acc * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)) + u_out * np.abs(ref)
    bad = ~(np.abs(c - ref) <= bound)
    return f"{int(bad.sum())} of {bad.size} outputs outside the error bound" if bad.any() else None


def search_tc(dev: OpenCLDevice, mode: int, run: Callable[[], Any], repeat: int, deadline: float,
              log: Callable[[str], None]) -> dict[str, int] | None:
    """The tensor-core GEMM's tiles in one mode: the built-in default, stage 1 (tc.shapes),
    then stage 2 (tc.neighbours from the best), each candidate verified first."""
    d = dev.cl_device
    limits = (int(d.max_work_group_size), int(d.local_mem_size))
    dtype = np.dtype(np.float32 if mode == 32 else np.float16)

    def verify(dev: OpenCLDevice) -> str | None:
        why = verify_tc(dev, dtype)
        if dev.tc_reason is not None:  # the build failed (the family was switched off): skip it
            reason, dev.tc_reason = dev.tc_reason, None
            raise RuntimeError(reason)
        return why

    return search(dev, tc.KEYS[mode], run, verify, repeat, deadline, log,
                  [dict(params.untuned(dev)[tc.KEYS[mode]]), *tc.shapes(mode, *limits)],
                  lambda best, step: tc.neighbours(mode, best, step, *limits), tc.TC_STEPS)


def search_xl(dev: OpenCLDevice, key: str, run: Callable[[], Any], verify: Callable[[Any], str | None],
              repeat: int, deadline: float, log: Callable[[str], None],
              first: list[dict[str, int]] = ()) -> dict[str, int] | None:
    """Stage 1 (after the candidates in `first`) then stage 2 over dev.params[key];
    returns the fastest verified candidate."""
    return search(dev, key, run, verify, repeat, deadline, log, [*first, *xl_shapes(dev)],
                  lambda best, step: xl_neighbours(dev, best, step), XL_STEPS)


def search(dev: OpenCLDevice, key: str, run: Callable[[], Any], verify: Callable[[Any], str | None],
           repeat: int, deadline: float, log: Callable[[str], None], stage1: list[dict[str, int]],
           neighbours: Callable[[dict[str, int], Any], list[dict[str, int]]], steps: list) -> dict[str, int] | None:
    """Time every stage-1 candidate for dev.params[key], then walk `steps` from the best one
    (neighbours(best, step)) until `deadline`; each candidate must pass `verify` first (a fast
    but miscompiled variant cannot win). Returns the fastest, or None."""
    seen: dict[tuple, float] = {}
    best: tuple[float, dict[str, int]] | None = None

    def measure(t: dict[str, int]) -> None:
        nonlocal best
        k = tuple(sorted(t.items()))
        if k in seen or time.monotonic() > deadline:
            return
        seen[k] = float("inf")
        dev.params[key] = t
        try:
            why = verify(dev)
            if why:
                log(f"{key} {_fmt(t)}: wrong results ({why}); skipped")
                return
            sec = _time(dev, run, repeat)
        except Exception as e:  # noqa: BLE001 - a candidate the driver rejects is skipped
            log(f"{key} {_fmt(t)}: failed ({str(e).strip().splitlines()[0][:120]})")
            return
        seen[k] = sec
        log(f"{key} {_fmt(t)}: {sec * 1e3:8.3f} ms")
        if best is None or sec < best[0]:
            best = (sec, t)

    for t in stage1:
        measure(t)
    if best is not None:
        for step in steps:
            for t in neighbours(best[1], step):
                measure(t)
    if time.monotonic() > deadline:
        log(f"{key}: time budget reached after {len(seen)} candidates")
    return None if best is None else dict(best[1])


def tune(dev: OpenCLDevice, quick: bool = False, log: Callable[[str], None] = print,
         budget_s: float | None = None) -> dict[str, Any]:
    """Measure candidates for GEMM and conv on `dev` against the built-in defaults; returns
    the parameters to store: only those that beat the default beyond noise.
    The search stops after `budget_s` seconds (default 180 on the GPU family, 120 on the
    CPU family, 40 with `quick`; the best verified candidate so far wins); on the CPU the fastest screened
    tiles then run interleaved rounds against the default."""
    saved = {k: (dict(v) if isinstance(v, dict) else v) for k, v in dev.params.items()}
    repeat = 3 if quick else 5
    builtin = params.untuned(dev)
    rounds = 5 if quick else 7
    found: dict[str, Any] = {}
    rng = np.random.default_rng(0)

    def rand(*shape: int) -> Any:
        # The device's own methods, not the public API: a backend depends on the contract only.
        return dev.upload(rng.standard_normal(shape, dtype=np.float32))

    try:
        dev.params["small_work"] = 0
        if dev.family == "cpu":
            n = 512 if quick else 1024
            a, b = rand(n, n), rand(n, n)
            convs = [(64, 128, 56), (256, 256, 28)] if quick else [(64, 64, 112), (128, 256, 56), (512, 512, 14)]
            conv_in = [(rand(1, c, h, h), rand(o, c, 3, 3), conv_params((1, c, h, h), (o, c, 3, 3), None, 1, 1, 1, 1))
                       for c, o, h in convs]
            runs = (("gemm", lambda: dev.matmul(a, b)),
                    ("conv", lambda: [dev.conv2d(x, w, None, p, "gemm") for x, w, p in conv_in]))
            vw = dev.params["gemm"]["VW"]
            t = dev.target
            regs, lanes = (t.vector_registers, isa.LANES.get(t.isa)) if t else (isa.DEFAULT_REGISTERS, None)
            cands = [{"MR": mr, "NV": nv} for mr, nv in cpu_candidates(regs, lanes, vw)]
            log(f"{len(cands)} micro-tiles fit {regs} vector registers at width {vw}")
            budget = (CPU_BUDGET_S / 3 if quick else CPU_BUDGET_S) if budget_s is None else budget_s
            t0 = time.monotonic()
            for (key, run), share in zip(runs, (0.4, 1.0)):
                short = screen(dev, key, run, cands, builtin[key], t0 + share * budget, 4, log)
                choice = pick(dev, key, run, short, builtin[key], rounds, log)
                if choice is not None:
                    found[key] = choice
        else:
            found.update(tune_gpu(dev, quick, repeat, rand, log, 180.0 if budget_s is None else budget_s))
    finally:
        dev.params["small_work"] = saved["small_work"]
        dev.params["xl_work"] = found.get("xl_work", saved["xl_work"])
    return found


def tune_gpu(dev: OpenCLDevice, quick: bool, repeat: int, rand: Callable[..., Any],
             log: Callable[[str], None], budget_s: float) -> dict[str, Any]:
    """The xl GEMM and conv searches, then the size from which xl beats the tiled GEMM.
    Problem sizes follow the device: the targets (4096^3, VGG-16 at batch 16) on a GPU,
    small ones when the GPU family is forced onto a CPU (XDEV_OPENCL_KERNELS=gpu)."""
    t0 = time.monotonic()
    gpu = not dev.is_cpu
    n = (2048 if quick else 4096) if gpu else (128 if quick else 256)
    a, b = rand(n, n), rand(n, n)
    batch, scale = (2 if quick else 8, 1) if gpu else (1, 8)
    conv_in = []
    for c, o, h in ((64, 128, 112), (256, 256, 56), (512, 512, 14)):
        xs, ws = (batch, c, h // scale, h // scale), (o, c, 3, 3)
        conv_in.append((rand(*xs), rand(*ws), conv_params(xs, ws, None, 1, 1, 1, 1)))
    found: dict[str, Any] = {}
    dev.params["xl_work"] = 0
    has_tc = dev.tc_reason is None
    # The untuned parameters (the database's entry, or derived) first: stage 2 then walks
    # from them when no other shape beats them.
    builtin = params.untuned(dev)
    gemm = search_xl(dev, "gemm_xl", lambda: dev.matmul(a, b), verify_gemm, repeat,
                     t0 + (0.35 if has_tc else 0.55) * budget_s, log, first=[builtin["gemm_xl"]])
    rounds = 5 if quick else 7
    if has_tc:  # the tensor-core GEMM in both modes (NVIDIA, compute capability 8.0+)
        found.update(tune_tc(dev, n, repeat, rounds, t0, budget_s, log))
    gemm_run = lambda: dev.matmul(a, b)  # noqa: E731
    if gemm:  # the search's winner against the built-in default, interleaved: kept only beyond noise
        gemm = pick(dev, "gemm_xl", gemm_run, [gemm], builtin["gemm_xl"], rounds, log)
    if gemm:
        found["gemm_xl"] = dev.params["gemm_xl"] = gemm
    conv = search_xl(dev, "conv_xl", lambda: [dev.conv2d(x, w, None, p, "gemm") for x, w, p in conv_in],
                     verify_conv, repeat, t0 + 0.9 * budget_s, log,
                     first=[builtin["conv_xl"]] + ([gemm] if gemm else []))
    if conv:
        conv = pick(dev, "conv_xl", lambda: [dev.conv2d(x, w, None, p, "gemm") for x, w, p in conv_in], [conv],
                    builtin["conv_xl"], rounds, log)
    if conv:
        found["conv_xl"] = dev.params["conv_xl"] = conv
    # Mid-sized products: where does packing start to pay? (cubes, the tiled kernel vs xl)
    for m in (96, 128, 192, 256, 384, 512, 768, 1024):
        if time.monotonic() > t0 + budget_s:
            break
        x, y = rand(m, m), rand(m, m)
        ts = {}
        for fam, work in (("tiled", 1 << 62), ("xl", 0)):
            dev.params["xl_work"] = work
            ts[fam] = _time(dev, lambda: dev.matmul(x, y), repeat)
        log(f"xl_work {m}^3: tiled {ts['tiled'] * 1e3:.3f} ms, xl {ts['xl'] * 1e3:.3f} ms")
        if ts["xl"] <= ts["tiled"]:
            found["xl_work"] = m**3
            break
    log(f"GPU search took {time.monotonic() - t0:.0f} s (budget {budget_s:.0f} s)")
    return found


def tune_tc(dev: OpenCLDevice, n: int, repeat: int, rounds: int, t0: float, budget_s: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    """search_tc for float16 then TF32 at n^3, each winner kept only beyond noise against
    the built-in default (pick). The float32 mode is forced for the search and restored."""
    found: dict[str, Any] = {}
    builtin = params.untuned(dev)
    rng = np.random.default_rng(4)
    saved = dev.force_tf32
    try:
        for mode, share in ((16, 0.45), (32, 0.55)):
            dtype = np.float32 if mode == 32 else np.float16
            a = dev.upload(rng.standard_normal((n, n)).astype(dtype))
            b = dev.upload(rng.standard_normal((n, n)).astype(dtype))
            dev.force_tf32 = True if mode == 32 else saved
            key = tc.KEYS[mode]
            run = lambda a=a, b=b: dev.matmul(a, b)  # noqa: E731
            best = search_tc(dev, mode, run, repeat, t0 + share * budget_s, log)
            if best:
                best = pick(dev, key, run, [best], builtin[key], rounds, log)
            dev.params[key] = {**builtin[key], **(best or {})}
            if best:
                found[key] = best
    finally:
        dev.force_tf32 = saved
    return found


def save(dev: OpenCLDevice, found: dict[str, Any]) -> Path:
    path = params.store(dev, found)
    dev.reload_params()
    return path
