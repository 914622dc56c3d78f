"""The `pipeline` op: disk -> RAM -> device -> compute, serial against xdev.prefetch.

Setup: N batches saved as .npy files (VGG-sized 16x3x224x224 float32 on GPUs, 8x3x112x112
on CPUs). A step reads one batch from disk, uploads it and runs VGG-16's first layers on it.
Whole epochs run serially (read, upload, compute, one after the other, each stage timed)
and through ``xdev.prefetch(xdev.npy_batches(files))``, interleaved (serial, prefetched,
serial, prefetched) with the page cache dropped before each epoch, so both read cold and
the stage times come from the same stretch of machine load as the steps.
efficiency = slowest stage / prefetched step: 1.0 means everything but the slowest stage
is hidden.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable

import numpy as np

import xdev
from xdev import _disk
from xdev._prefetch import _Plain

from . import noise
from .run import Settings, _row
from .timing import Timing
from .workloads import VGG16, conv_flops

GPU_BATCH = (16, 3, 224, 224)  # 9.6 MB: the lecture's VGG-16 batch
CPU_BATCH = (8, 3, 112, 112)  # 1.2 MB: a few cores compute ~100x slower than a GPU
# VGG-16's first layers, at the input's resolution: conv1_1 and conv1_2 on GPUs; conv1_1 alone
# on CPUs, the least compute per input byte of the network, so the data stages are not
# lost in the compute (on 2 cores conv1_2 alone takes ~20x longer than reading its input).
GPU_LAYERS, CPU_LAYERS = 2, 1
STEPS, STEPS_QUICK = 12, 6
EPOCHS, EPOCHS_QUICK = 2, 1  # of each kind, interleaved
WORKERS = 2  # npy_batches reader threads
DEPTH = 2
TIMELINE_STEPS = 4


class _Log:
    """Intervals (lane, step, t0, t1) from any thread, for the timeline plot."""

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

    def upload(self, host: np.ndarray) -> tuple[Any, Any]:
        t0 = time.perf_counter()
        out = self.inner.upload(host)
        self.log.add("upload", self.n, t0, time.perf_counter())
        self.n += 1
        return out

    def ready(self, token: Any) -> None:
        self.inner.ready(token)

    def close(self) -> None:
        self.inner.close()


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


# Issue target: a prefetched step costs at most this many times the slowest stage.
TARGET = 1.15


def target_verdict(pre: float, pre_spread: float, slowest: float, slowest_spread: float) -> str:
    """'met', 'NOT met', or 'within noise' when the prefetched step's interval overlaps the
    target's (TARGET x the slowest stage's interval): a verdict smaller than its own spread
    is no result."""
    if noise.overlaps(pre, pre_spread, TARGET * slowest, TARGET * slowest_spread):
        return "within noise"
    return "met" if pre <= TARGET * slowest else "NOT met"


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
    n_steps = STEPS_QUICK if quick else STEPS
    epochs = EPOCHS_QUICK if quick else EPOCHS
    dtype = s.dtype
    root = tempfile.mkdtemp(prefix="xdev-pipeline-", dir=workdir)
    try:
        rng = np.random.default_rng(12)
        paths = []
        for i in range(n_steps):
            p = os.path.join(root, f"batch{i:03d}.npy")
            np.save(p, rng.standard_normal(shape_t).astype(dtype))
            paths.append(p)
        return _measure(dev, s, shape_t, paths, epochs)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _measure(dev, s: Settings, shape: tuple[int, ...], paths: list[str], epochs: int) -> list[dict[str, Any]]:
    dtype = s.dtype
    ws = _layers(dev, dtype, shape[1])
    flops = sum(conv_flops(shape[0], o, shape[2], shape[3], c, 1, 3, 3) for _, c, o, _ in VGG16[:len(ws)])
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    read = _disk._read

    def sync() -> None:
        dev.synchronize()

    # Warm-up: builds kernels (reported apart), touches the allocator and the files.
    b0 = dev.build_seconds
    t0 = time.perf_counter()
    x0 = xdev.asarray(read(paths[0], 0, shape[0]), backend=dev.key)
    _compute(ws, x0)
    sync()
    first_s, build_s = time.perf_counter() - t0, dev.build_seconds - b0

    # -- whole epochs, serial and prefetched, interleaved ----------------------------------------
    # The serial epochs also give the stage times (each stage timed alone, in turn), so the
    # stages and both kinds of step are measured under the same machine load.
    serial_steps: list[float] = []
    pre_steps: list[float] = []
    cold: list[float] = []
    up: list[float] = []
    comp: list[float] = []
    timelines: dict[str, list[tuple[str, int, float, float]]] = {}
    drop_fail = None
    for e in range(epochs):
        for kind in ("serial", "prefetched"):
            drop_fail = drop_fail or _disk.drop_page_cache(paths)
            log = _Log()
            steps = (_serial_epoch if kind == "serial" else _prefetched_epoch)(dev, ws, paths, shape, log)
            (serial_steps if kind == "serial" else pre_steps).extend(steps)
            if kind == "serial":
                for lane, acc in (("disk read", cold), ("upload", up), ("compute", comp)):
                    acc.extend(b - a for ln, _, a, b in log.spans if ln == lane)
            if e == 0:
                timelines[kind] = log.spans
    warm = []
    for p in paths:  # the files are cached now: the last epoch read them
        t0 = time.perf_counter()
        read(p, 0, shape[0])
        warm.append(time.perf_counter() - t0)

    stage = {"disk read cold": cold, "disk read warm": warm, "upload": up, "compute": comp}
    med = {k: _median_spread(v) for k, v in stage.items()}
    # The disk stage the epochs pay is what the serial epochs measured ("cold": see cold_note).
    slowest_name = max(("disk read cold", "upload", "compute"), key=lambda k: med[k][0])
    slowest, slowest_spread = med[slowest_name]
    ser, pre = _median_spread(serial_steps), _median_spread(pre_steps)
    verdict = target_verdict(pre[0], pre[1], slowest, slowest_spread)
    shape_s = "x".join(map(str, shape))
    layers = "+".join(n for n, *_ in VGG16[:len(ws)])
    common = dict(batch_shape=shape_s, layers=layers, batch_bytes=nbytes, steps=len(paths), epochs=epochs, depth=DEPTH,
                  workers=WORKERS, cold=not drop_fail, cold_note=drop_fail)
    rows = []
    for name, (m, sp) in med.items():
        t = Timing(m, sp, len(stage[name]), build_s if name == "compute" else 0.0,
                   first_s if name == "compute" else m)
        extra = {"gbps": nbytes / m / 1e9} if name != "compute" else {}
        rows.append(_row(dev, s, "pipeline", shape_s, name, t, flops if name == "compute" else None,
                         stage=name, layer=f"{name} {shape_s}", **extra, **common))
    rows.append(_row(dev, s, "pipeline", shape_s, "serial step", Timing(ser[0], ser[1], len(serial_steps), 0.0, ser[0]),
                     flops, stage="serial step", layer=f"serial step {shape_s}", **common))
    rows.append(_row(dev, s, "pipeline", shape_s, "prefetched step",
                     Timing(pre[0], pre[1], len(pre_steps), 0.0, pre[0]), flops, stage="prefetched step",
                     layer=f"prefetched step {shape_s}",
                     slowest_stage=slowest_name, slowest_s=slowest, efficiency=slowest / pre[0],
                     speedup=ser[0] / pre[0], target_met=pre[0] <= TARGET * slowest, target=verdict,
                     timeline={k: _relative(v) for k, v in timelines.items()}, **common))
    return rows


def _relative(spans: list[tuple[str, int, float, float]]) -> list[list[Any]]:
    """The first TIMELINE_STEPS steps, times in ms from the epoch's first event."""
    spans = [sp for sp in spans if sp[1] < TIMELINE_STEPS]
    if not spans:
        return []
    t0 = min(sp[2] for sp in spans)
    return [[lane, step, (a - t0) * 1e3, (b - t0) * 1e3] for lane, step, a, b in sorted(spans, key=lambda x: x[2])]


def _serial_epoch(dev, ws, paths, shape, log: _Log) -> list[float]:
    steps = []
    for i, p in enumerate(paths):
        t0 = time.perf_counter()
        host = _disk._read(p, 0, shape[0])
        t1 = time.perf_counter()
        xb = xdev.asarray(host, backend=dev.key)
        dev.synchronize()
        t2 = time.perf_counter()
        _compute(ws, xb)
        dev.synchronize()
        t3 = time.perf_counter()
        log.add("disk read", i, t0, t1)
        log.add("upload", i, t1, t2)
        log.add("compute", i, t2, t3)
        steps.append(t3 - t0)
    return steps


def _prefetched_epoch(dev, ws, paths, shape, log: _Log) -> list[float]:
    src = xdev.npy_batches(paths, workers=WORKERS)
    counter = iter(range(len(paths)))
    lock = threading.Lock()

    def timed_read(path: str, start: int, stop: int) -> np.ndarray:
        with lock:
            i = next(counter)
        t0 = time.perf_counter()
        out = _disk._read(path, start, stop)
        log.add("disk read", i, t0, time.perf_counter())
        return out

    src._reader = timed_read
    inner: Callable[[int], Any] = dev.stager
    # Time the uploads in the prefetch thread: wrap this device's stager for this epoch only.
    dev.stager = lambda slots: _TimedStager(inner(slots) or _Plain(dev), log)  # type: ignore[method-assign]
    try:
        it = xdev.prefetch(src, depth=DEPTH, backend=dev.key)
    finally:
        del dev.stager  # back to the class's method
    steps = []
    with it:
        t_prev = time.perf_counter()
        for i, xb in enumerate(it):
            t1 = time.perf_counter()
            _compute(ws, xb)
            dev.synchronize()  # a training step reads its loss: the host waits for the step
            t2 = time.perf_counter()
            log.add("compute", i, t1, t2)
            # Step i costs from the end of step i-1 (the first: from the start, pipeline fill).
            steps.append(t2 - t_prev)
            t_prev = t2
    return steps[1:] if len(steps) > 1 else steps  # steady state: without the pipeline fill


def table(console: Any, results: list[dict[str, Any]]) -> None:
    rows = [r for r in results if r["op"] == "pipeline"]
    if not rows:
        return
    from rich.table import Table

    from .report import _f, _ms

    t = Table(title="pipeline (claim 4): disk -> RAM -> device -> VGG-16 " + "/".join(
              dict.fromkeys(r["layers"] for r in rows)) + ", per batch; cold reads: page cache dropped",
              title_justify="left", header_style="bold")
    for c in ("device", "batch", "stage", "median ms", "spread ms", "GB/s", "notes"):
        t.add_column(c, justify="left" if c in ("device", "batch", "stage", "notes") else "right")
    for r in rows:
        note = ""
        if r["stage"] == "prefetched step":
            note = (f"efficiency {r['efficiency']:.2f} (slowest: {r['slowest_stage']}), "
                    f"{r['speedup']:.2f}x serial, target <= {TARGET}x slowest "
                    f"{r.get('target') or ('met' if r['target_met'] else 'NOT met')}")
        elif r["stage"] == "disk read cold" and not r["cold"]:
            note = f"not cold: {r['cold_note']}"
        elif r["stage"] == "compute" and r.get("gflops"):
            note = f"{r['gflops']:.1f} GFLOP/s"
        t.add_row(r["device"], r["batch_shape"], r["stage"], _ms(r["median_s"]), _ms(r["spread_s"]),
                  _f(r.get("gbps"), ".2f"), note, style="bold" if r["stage"] == "prefetched step" else None)
    console.print(t)


def plot_timeline(path: str, results: list[dict[str, Any]]) -> bool:
    """A PNG per run: for each device, serial vs prefetched steps as lanes over time."""
    rows = [r for r in results if r["op"] == "pipeline" and r.get("timeline")]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lanes = ["disk read", "upload", "compute"]
    colors = {"disk read": "tab:orange", "upload": "tab:green", "compute": "tab:blue"}
    fig, axes = plt.subplots(len(rows), 2, figsize=(13, 2.6 * len(rows)), squeeze=False)
    for (axs, r) in zip(axes, rows):
        end = max((sp[3] for v in r["timeline"].values() for sp in v), default=1.0)
        for ax, kind in zip(axs, ("serial", "prefetched")):
            for lane, step, a, b in r["timeline"].get(kind, []):
                y = lanes.index(lane)
                ax.broken_barh([(a, max(b - a, end * 0.002))], (y - 0.4, 0.8), color=colors[lane],
                               edgecolor="black", linewidth=0.4)
                ax.text((a + b) / 2, y, str(step), ha="center", va="center", fontsize=7)
            ax.set_yticks(range(len(lanes)))
            ax.set_yticklabels(lanes)
            ax.set_xlim(0, end * 1.02)
            ax.set_xlabel("ms")
            ax.set_title(f"{r['device']}: {kind}, first {TIMELINE_STEPS} steps", fontsize=9)
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
