"""The `pipeline` op: disk -> RAM -> device -> compute, serial against xdev.prefetch.

Setup: FILL + STEADY batches saved as .npy files (VGG-sized 16x3x224x224 float32 on GPUs,
8x3x112x112 on CPUs). A step reads one batch from disk, uploads it and runs VGG-16's first
layers on it. Each round runs one epoch of each kind, in alternating order, with the page
cache dropped before every epoch (so all read cold):

- disk: ``xdev.npy_batches(files, workers=WORKERS)`` alone, reading into the prefetcher's
  staging buffers as it does in the pipeline (nothing uploaded): the disk stage at the
  concurrency the pipeline uses;
- serial: read (one reader), upload (``xdev.asarray``), compute, one after the other,
  each stage timed;
- prefetched: ``xdev.prefetch(xdev.npy_batches(files, workers=WORKERS), depth=DEPTH)``,
  compute and a synchronize per step, as a training loop reading its loss does.

An epoch's figure is its steady-state time per batch: from the end of batch FILL (the
pipeline has filled) to the end of the last, over the batches in between; medians and
spreads are over the epochs. The upload stage is timed alone through the prefetcher's
staging path (a batch in a staging buffer -> device), interleaved with a plain upload from
pinned memory (the bus's ceiling) where the device has pinned memory.

bottleneck = the largest per-batch stage cost (disk at WORKERS readers, upload, compute);
efficiency = bottleneck / prefetched step: 1.0 means everything but the bottleneck is
hidden. A step cannot beat its bottleneck, so an efficiency above 1 by more than its spread
is flagged as a measurement error, like a % of peak above 100.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any

import numpy as np

import xdev
from xdev import _disk
from xdev._disk import Staged
from xdev._prefetch import _Plain, _Staging

from . import noise
from .run import Settings, _row
from .sides import BASELINE
from .timing import Timing
from .workloads import VGG16, conv_flops

GPU_BATCH = (16, 3, 224, 224)  # 9.6 MB: the lecture's VGG-16 batch
CPU_BATCH = (8, 3, 112, 112)  # 1.2 MB: a few cores compute ~100x slower than a GPU
# VGG-16's first layers, at the input's resolution: conv1_1 and conv1_2 on GPUs; conv1_1 alone
# on CPUs, the least compute per input byte of the network, so the data stages are not
# lost in the compute (on 2 cores conv1_2 alone takes ~20x longer than reading its input).
GPU_LAYERS, CPU_LAYERS = 2, 1
WORKERS = 2  # npy_batches reader threads
DEPTH = 2
FILL = DEPTH + WORKERS  # batches at the start of an epoch left out: the readers and the queue fill
STEADY, STEADY_QUICK = 32, 16  # batches timed per epoch, after the fill
EPOCHS, EPOCHS_QUICK = 3, 2  # of each kind, interleaved
UPLOAD_ROUNDS, UPLOAD_ROUNDS_QUICK = 20, 10
# Targets: a prefetched step costs at most TARGET x the bottleneck stage; on a GPU the
# staged upload reaches at least UPLOAD_TARGET x a plain upload from pinned memory.
TARGET = 1.15
UPLOAD_TARGET = 0.8


class _Log:
    """Intervals (lane, batch, t0, t1) from any thread, for the timeline plot."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, int, float, float]] = []

    def add(self, lane: str, step: int, t0: float, t1: float) -> None:
        with self.lock:
            self.spans.append((lane, step, t0, t1))


class _TimedStager:
    """Wraps a device's prefetch stager to log the host time of each upload."""

    def __init__(self, inner: Any, log: _Log) -> None:
        self.inner, self.log, self.n = inner, log, 0

    def __getattr__(self, name: str) -> Any:  # stage, give_back, ready, close: as they are
        return getattr(self.inner, name)

    def _timed(self, fn: Any, arg: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(arg)
        self.log.add("upload", self.n, t0, time.perf_counter())
        self.n += 1
        return out

    def upload(self, host: np.ndarray) -> tuple[Any, Any]:
        return self._timed(self.inner.upload, host)

    def upload_staged(self, slot: Any) -> tuple[Any, Any]:
        return self._timed(self.inner.upload_staged, slot)


class _Epoch:
    """One epoch: its spans, when it started, and when each batch was done."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.log = _Log()
        self.t0 = time.perf_counter()
        self.done: list[float] = []

    def per_batch(self) -> float:
        """Steady state: from the end of batch FILL to the end of the last, per batch."""
        k = min(FILL, len(self.done) - 1)
        if k < 1:
            return self.done[-1] - self.t0
        return (self.done[-1] - self.done[k - 1]) / (len(self.done) - k)

    def window(self) -> list[float]:
        k = min(FILL, len(self.done) - 1)
        a = self.done[k - 1] if k >= 1 else self.t0
        return [(a - self.t0) * 1e3, (self.done[-1] - self.t0) * 1e3]


def _layers(dev, dtype: np.dtype, C: int) -> list[Any]:
    rng = np.random.default_rng(11)
    ws, c = [], C
    for _, _, cout, _ in VGG16[:_n_layers(dev)]:
        w = (rng.standard_normal((cout, c, 3, 3)) / np.sqrt(9 * c)).astype(dtype)
        ws.append(xdev.asarray(w, backend=dev.key))
        c = cout
    return ws


def _n_layers(dev) -> int:
    return CPU_LAYERS if dev.is_cpu else GPU_LAYERS


def _compute(ws: list[Any], x: Any) -> Any:
    for w in ws:
        x = xdev.conv2d(x, w, padding=1)
    return x


def target_verdict(pre: float, pre_spread: float, slowest: float, slowest_spread: float) -> str:
    """'met', 'NOT met', or 'within noise' when the prefetched step's interval overlaps the
    target's (TARGET x the bottleneck's interval): a verdict smaller than its own spread
    is no result."""
    if noise.overlaps(pre, pre_spread, TARGET * slowest, TARGET * slowest_spread):
        return "within noise"
    return "met" if pre <= TARGET * slowest else "NOT met"


def efficiency(bottleneck: float, b_spread: float, pre: float, pre_spread: float) -> tuple[float, float, bool]:
    """bottleneck / prefetched step, its spread (half-width), and whether it is a
    measurement error: above 1 by more than its spread (a step cannot beat its slowest stage)."""
    e, sp, _ = noise.ratio(bottleneck, b_spread, pre, pre_spread)
    return e, sp, e - 1.0 > sp


def _blas_threads() -> int | None:
    """The threads NumPy's BLAS runs a GEMM on (threadpoolctl), or None if unknown. On a CPU
    device they share the cores with the pipeline's reader and prefetch threads."""
    try:
        from threadpoolctl import threadpool_info

        return next((int(p["num_threads"]) for p in threadpool_info() if p.get("user_api") == "blas"), None)
    except Exception:  # noqa: BLE001 - optional (the bench extra installs it)
        return None


def _median_spread(v: list[float]) -> tuple[float, float]:
    q1, med, q3 = np.percentile(np.asarray(v), [25, 50, 75])
    return float(med), float(q3 - q1)


def pipeline_rows(dev, s: Settings, quick: bool, batch: int | None = None, image: int | None = None,
                  workdir: str | None = None) -> list[dict[str, Any]]:
    """Stage, serial and prefetched rows for one device (and the timeline in the last row)."""
    shape = list(CPU_BATCH if dev.is_cpu else GPU_BATCH)
    if batch:
        shape[0] = batch
    if image:
        shape[2] = shape[3] = image
    shape_t = tuple(shape)
    n_files = FILL + (STEADY_QUICK if quick else STEADY)
    root = tempfile.mkdtemp(prefix="xdev-pipeline-", dir=workdir)
    try:
        rng = np.random.default_rng(12)
        paths = []
        for i in range(n_files):
            p = os.path.join(root, f"batch{i:03d}.npy")
            np.save(p, rng.standard_normal(shape_t).astype(s.dtype))
            paths.append(p)
        return _measure(dev, s, shape_t, paths, EPOCHS_QUICK if quick else EPOCHS,
                        UPLOAD_ROUNDS_QUICK if quick else UPLOAD_ROUNDS)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(dev, s: Settings, shape: tuple[int, ...], paths: list[str], epochs: int,
             upload_rounds: int) -> list[dict[str, Any]]:
    dtype = s.dtype
    ws = _layers(dev, dtype, shape[1])
    flops = sum(conv_flops(shape[0], o, shape[2], shape[3], c, 1, 3, 3) for _, c, o, _ in VGG16[:len(ws)])
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    heads = [_disk._header(p) for p in paths]

    # Warm-up: builds kernels (reported apart), touches the allocator and the files.
    b0 = dev.build_seconds
    t0 = time.perf_counter()
    x0 = xdev.asarray(_disk._read(heads[0], 0, shape[0]), backend=dev.key)
    _compute(ws, x0)
    dev.synchronize()
    first_s, build_s = time.perf_counter() - t0, dev.build_seconds - b0

    runs: dict[str, list[_Epoch]] = {"disk": [], "serial": [], "prefetched": []}
    drop_fail = None
    epoch_fns = {"disk": _disk_epoch, "serial": _serial_epoch, "prefetched": _prefetched_epoch}
    for e in range(epochs):
        order = ("disk", "serial", "prefetched") if e % 2 == 0 else ("prefetched", "serial", "disk")
        for kind in order:
            drop_fail = drop_fail or _disk.drop_page_cache(paths)
            runs[kind].append(epoch_fns[kind](dev, ws, paths, heads, shape))
    warm = []
    for h in heads:  # the files are cached now: the last epoch read them
        t0 = time.perf_counter()
        _disk._read(h, 0, shape[0])
        warm.append(time.perf_counter() - t0)
    host = _disk._read(heads[0], 0, shape[0])
    staged_up, pinned_up = _upload_stage(dev, host, upload_rounds)

    def spans(kind: str, lane: str) -> list[float]:
        return [b - a for ep in runs[kind] for ln, _, a, b in ep.log.spans if ln == lane]

    def epochs_of(kind: str) -> tuple[float, float]:
        return _median_spread([ep.per_batch() for ep in runs[kind]])

    stage: dict[str, tuple[float, float, int]] = {}
    for name, v in (("disk read cold", spans("serial", "disk read")), ("disk read warm", warm),
                    ("upload", staged_up), ("upload pinned", pinned_up), ("compute", spans("serial", "compute"))):
        if v:
            stage[name] = (*_median_spread(v), len(v))
    stage["disk stage"] = (*epochs_of("disk"), len(runs["disk"]))
    # The bottleneck: the largest per-batch cost among the stages the pipeline overlaps.
    bneck_name = max(("disk stage", "upload", "compute"), key=lambda k: stage[k][0])
    bneck, bneck_sp, _ = stage[bneck_name]
    ser, pre = epochs_of("serial"), epochs_of("prefetched")
    eff, eff_sp, bad = efficiency(bneck, bneck_sp, pre[0], pre[1])
    verdict = "measurement error" if bad else target_verdict(pre[0], pre[1], bneck, bneck_sp)
    beside, _ = _median_spread(spans("prefetched", "compute"))
    shape_s = "x".join(map(str, shape))
    layers = "+".join(n for n, *_ in VGG16[:len(ws)])
    n_steady = len(paths) - FILL
    common = dict(batch_shape=shape_s, layers=layers, batch_bytes=nbytes, steps=len(paths), steady_batches=n_steady,
                  fill_batches=FILL, epochs=epochs, depth=DEPTH, workers=WORKERS, device_is_cpu=dev.is_cpu,
                  blas_threads=_blas_threads() if dev.backend == BASELINE else None,
                  cold=not drop_fail,
                  cold_note=drop_fail)
    rows = []
    for name in ("disk read cold", "disk read warm", "disk stage", "upload", "upload pinned", "compute"):
        if name not in stage:
            continue
        m, sp, n = stage[name]
        t = Timing(m, sp, n, build_s if name == "compute" else 0.0, first_s if name == "compute" else m)
        extra: dict[str, Any] = {"gbps": nbytes / m / 1e9} if name != "compute" else {}
        if name == "upload" and "upload pinned" in stage:
            r, r_sp, _ = noise.ratio(stage["upload pinned"][0], stage["upload pinned"][1], m, sp)
            extra.update(vs_pinned=r, vs_pinned_spread=r_sp,
                         upload_target=_upload_verdict(r, r_sp) if not dev.is_cpu else None)
        rows.append(_row(dev, s, "pipeline", shape_s, name, t, flops if name == "compute" else None,
                         stage=name, layer=f"{name} {shape_s}", **extra, **common))
    rows.append(_row(dev, s, "pipeline", shape_s, "serial step", Timing(ser[0], ser[1], epochs, 0.0, ser[0]),
                     flops, stage="serial step", layer=f"serial step {shape_s}", **common))
    timeline = {k: _timeline(_median_epoch(v)) for k, v in runs.items()}
    rows.append(_row(dev, s, "pipeline", shape_s, "prefetched step",
                     Timing(pre[0], pre[1], epochs, 0.0, pre[0]), flops, stage="prefetched step",
                     layer=f"prefetched step {shape_s}",
                     bottleneck_stage=bneck_name, bottleneck_s=bneck, bottleneck_spread_s=bneck_sp,
                     efficiency=eff, efficiency_spread=eff_sp, measurement_error=bad,
                     compute_beside_readers_s=beside, speedup=ser[0] / pre[0], target_met=pre[0] <= TARGET * bneck,
                     target=verdict, timeline=timeline, **common))
    return rows


def _upload_verdict(r: float, spread: float) -> str:
    if abs(r - UPLOAD_TARGET) <= spread:
        return "within noise"
    return "met" if r >= UPLOAD_TARGET else "NOT met"


def _median_epoch(eps: list[_Epoch]) -> _Epoch:
    return sorted(eps, key=_Epoch.per_batch)[len(eps) // 2]


def _timeline(ep: _Epoch) -> dict[str, Any]:
    """Every span of the epoch, in ms from its start, and the steady-state window the figures use."""
    spans = sorted(ep.log.spans, key=lambda x: x[2])
    return {"spans": [[lane, i, (a - ep.t0) * 1e3, (b - ep.t0) * 1e3] for lane, i, a, b in spans],
            "window": ep.window(), "per_batch_ms": ep.per_batch() * 1e3}


def _disk_epoch(dev, ws, paths, heads, shape) -> _Epoch:
    """npy_batches alone, into the prefetcher's staging buffers (given back unused)."""
    ep = _Epoch("disk")
    src = xdev.npy_batches(paths, workers=WORKERS)
    src._on_read = lambda i, a, b: ep.log.add("disk read", i, a, b)
    stager = dev.stager(WORKERS + 2) or _Plain(dev)
    ep.t0 = time.perf_counter()  # the epoch starts here: headers and buffers are set-up, not the stage
    try:
        for item in src._batches(_Staging(dev, stager)):
            ep.done.append(time.perf_counter())
            if isinstance(item, Staged):
                stager.give_back(item.slot)
    finally:
        stager.close()
    return ep


def _serial_epoch(dev, ws, paths, heads, shape) -> _Epoch:
    ep = _Epoch("serial")
    for i, h in enumerate(heads):
        t0 = time.perf_counter()
        host = _disk._read(h, 0, shape[0])
        t1 = time.perf_counter()
        xb = xdev.asarray(host, backend=dev.key)
        dev.synchronize()
        t2 = time.perf_counter()
        _compute(ws, xb)
        dev.synchronize()
        t3 = time.perf_counter()
        ep.log.add("disk read", i, t0, t1)
        ep.log.add("upload", i, t1, t2)
        ep.log.add("compute", i, t2, t3)
        ep.done.append(t3)
    return ep


def _prefetched_epoch(dev, ws, paths, heads, shape) -> _Epoch:
    ep = _Epoch("prefetched")
    src = xdev.npy_batches(paths, workers=WORKERS)
    src._on_read = lambda i, a, b: ep.log.add("disk read", i, a, b)
    inner = dev.stager
    # Time the uploads in the prefetch thread: wrap this device's stager for this epoch only.
    dev.stager = lambda slots: _TimedStager(inner(slots) or _Plain(dev), ep.log)  # type: ignore[method-assign]
    ep.t0 = time.perf_counter()  # after the headers are read: the prefetch thread starts reading now
    try:
        it = xdev.prefetch(src, depth=DEPTH, backend=dev.key)
    finally:
        del dev.stager  # back to the class's method
    with it:
        for i, xb in enumerate(it):
            t1 = time.perf_counter()
            _compute(ws, xb)
            dev.synchronize()  # a training step reads its loss: the host waits for the step
            t2 = time.perf_counter()
            ep.log.add("compute", i, t1, t2)
            ep.done.append(t2)
    return ep


def _upload_stage(dev, host: np.ndarray, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds per upload through the prefetcher's staging path (a batch already in a staging
    buffer, as the readers leave it, to the device) and, interleaved, per plain upload from
    pinned memory (empty where the device has none)."""
    stager = dev.stager(2) or _Plain(dev)
    pinned = dev.pinned_empty(host.shape, host.dtype)
    if pinned is not None:
        pinned[...] = host
    staged_t: list[float] = []
    pinned_t: list[float] = []

    def staged() -> float:
        slot = stager.stage(host.shape, host.dtype) if hasattr(stager, "stage") else None
        if slot is not None:
            slot.host[...] = host  # the readers' work in the pipeline: not this stage's
        dev.synchronize()
        t0 = time.perf_counter()
        data, token = stager.upload_staged(slot) if slot is not None else stager.upload(host)
        if token is not None:
            stager.ready(token)
        dev.synchronize()
        dt = time.perf_counter() - t0
        del data
        return dt

    def plain() -> float:
        dev.synchronize()
        t0 = time.perf_counter()
        data = dev.upload(pinned)
        dev.synchronize()
        dt = time.perf_counter() - t0
        del data
        return dt

    try:
        for r in range(rounds + 1):  # round 0 warms up (buffers, allocator), not counted
            sides = [(staged, staged_t)] + ([(plain, pinned_t)] if pinned is not None else [])
            for fn, acc in (sides if r % 2 else sides[::-1]):
                dt = fn()
                if r:
                    acc.append(dt)
    finally:
        stager.close()
    return staged_t, pinned_t


def table(console: Any, results: list[dict[str, Any]]) -> None:
    rows = [r for r in results if r["op"] == "pipeline"]
    if not rows:
        return
    from .report import Column, _f, _ms, _time_cell, fit

    r0 = rows[0]
    title = ("pipeline (claim 4): disk -> RAM -> device -> VGG-16 " + "/".join(dict.fromkeys(r["layers"] for r in rows))
             + f", per batch; cold reads (page cache dropped); steps and the disk stage at steady state, batches "
             f"{r0['fill_batches'] + 1}-{r0['steps']} of each epoch, spread over {r0['epochs']} epochs; disk: "
             f"{r0['workers']} readers at once, alone; upload: the prefetch staging path; efficiency = bottleneck "
             f"stage / prefetched step, target <= {TARGET}x")
    # Narrowed like the other tables (report.STEPS): on 80 columns the spread joins the median,
    # labels shorten and the notes wrap; no value is cut.
    fit(console, title, [
        Column("device", lambda r, st: r["device"], left=True),
        Column("batch", lambda r, st: r["batch_shape"], left=True),
        Column("stage", lambda r, st: _stage_label(r, short="short" in st), left=True),
        Column("median ms", _time_cell("median_s"), head_short="ms ±spread"),
        Column("spread ms", lambda r, st: _ms(r["spread_s"]), drop="spread"),
        Column("GB/s", lambda r, st: _f(r.get("gbps"), ".2f")),
        Column("notes", lambda r, st: _note(r, short="short" in st), left=True)],
        rows, style=lambda r: "bold" if r["stage"] == "prefetched step" else None)


def _stage_label(r: dict[str, Any], short: bool = False) -> str:
    if short:
        return {"disk read cold": "cold read", "disk read warm": "warm read", "disk stage": f"disk x{r['workers']}",
                "upload": "upload", "upload pinned": "pinned upload", "serial step": "serial",
                "prefetched step": "prefetched"}.get(r["stage"], r["stage"])
    return {"disk read cold": "disk read cold, 1 reader", "disk stage": f"disk, {r['workers']} readers",
            "upload": "upload, staged", "upload pinned": "upload from pinned"}.get(r["stage"], r["stage"])


def _note(r: dict[str, Any], short: bool = False) -> str:
    """The row's note; short: the same figures in fewer words, for a narrow terminal."""
    st = r["stage"]
    if st == "prefetched step":
        word = "eff." if short else "efficiency"
        eff = f"{word} {r['efficiency']:.2f}±{r['efficiency_spread']:.2f} ({r['bottleneck_stage']})"
        if r.get("measurement_error"):
            return f"[red]{eff}: above 1 beyond its spread, a measurement error[/red]"
        beside = r.get("compute_beside_readers_s")
        return (f"{eff}, {r['speedup']:.2f}x serial, target {r['target']}"
                + (f"; compute {beside * 1e3:.3g} ms {'w/' if short else 'beside the'} readers" if beside else ""))
    if st in ("disk read cold", "disk stage") and not r["cold"]:
        return f"not cold: {r['cold_note']}"
    if st == "upload":
        if r.get("vs_pinned") is None:
            return ""
        v = (f"{r['vs_pinned']:.2f}±{r['vs_pinned_spread']:.2f}x "
             + ("pinned" if short else "a plain upload from pinned memory"))
        return v + (f", target >= {UPLOAD_TARGET}x {r['upload_target']}" if r.get("upload_target") else "")
    if st == "compute" and r.get("gflops"):
        return f"{r['gflops']:.1f} GFLOP/s" + (f", {r['blas_threads']} BLAS threads" if r.get("blas_threads") else "")
    return ""


def plot_timeline(path: str, results: list[dict[str, Any]]) -> bool:
    """A PNG per run: for each device, one whole epoch of each kind (the median one) as lanes
    over time, the steady-state window the figures come from shaded."""
    rows = [r for r in results if r["op"] == "pipeline" and r.get("timeline")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = ["disk read", "upload", "compute"]
    colors = {"disk read": "tab:orange", "upload": "tab:green", "compute": "tab:blue"}
    kinds = [("disk", f"disk alone, {WORKERS} readers"), ("serial", "serial"), ("prefetched", "prefetched")]
    fig, axes = plt.subplots(len(rows), len(kinds), figsize=(18, 2.8 * len(rows)), squeeze=False)
    for axs, r in zip(axes, rows):
        for ax, (kind, title) in zip(axs, kinds):
            tl = r["timeline"].get(kind)
            if not tl:
                ax.set_visible(False)
                continue
            end = max((sp[3] for sp in tl["spans"]), default=1.0)
            a, b = tl["window"]
            ax.axvspan(a, b, color="0.92", zorder=0, label="steady state (the figures)")
            for lane, step, t0, t1 in tl["spans"]:
                y = lanes.index(lane)
                ax.broken_barh([(t0, max(t1 - t0, end * 0.002))], (y - 0.4, 0.8), color=colors[lane],
                               edgecolor="black", linewidth=0.3, zorder=2)
                if t1 - t0 > end * 0.03:
                    ax.text((t0 + t1) / 2, y, str(step), ha="center", va="center", fontsize=6, zorder=3)
            ax.set_yticks(range(len(lanes)))
            ax.set_yticklabels(lanes)
            ax.set_xlim(0, end * 1.02)
            ax.set_xlabel("ms")
            ax.set_title(f"{r['device']}: {title}, {tl['per_batch_ms']:.3g} ms/batch over the shaded "
                         f"batches {r['fill_batches'] + 1}-{r['steps']}", fontsize=8)
            ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def transfer_rows(dev, s: Settings, nbytes: int) -> list[dict[str, Any]]:
    """The transfer table's rows this module adds: downloads into pinned memory, and uploads
    of pageable memory through the prefetch staging buffers (where the device has them)."""
    from .run import _rand, _time

    n = max(1, nbytes // s.dtype.itemsize)
    size = n * s.dtype.itemsize
    host = _rand((n,), s.dtype, 6)
    out = []

    def row(name: str, t: Timing) -> dict[str, Any]:
        return _row(dev, s, "transfer", f"{size} B", name, t, None, bytes=size, gbps=size / t.median_s / 1e9)

    pinned = dev.pinned_empty((n,), s.dtype)
    if pinned is not None:
        x = xdev.asarray(host, backend=dev.key)
        out.append(row("device-to-host pinned", _time(dev, lambda: x.numpy(out=pinned), s)))
    stager = dev.stager(2)
    if stager is not None:
        def staged() -> None:
            data, token = stager.upload(host)
            if token is not None:
                stager.ready(token)

        try:
            out.append(row("host-to-device pageable, staged", _time(dev, staged, s)))
        finally:
            stager.close()
    return out
