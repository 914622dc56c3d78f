"""python -m xdev.bench: CPU vs CUDA vs OpenCL, measured on this machine."""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

import xdev
from xdev._registry import BACKEND_NAMES, get_device

from . import machine as mach
from . import pipeline
from . import workloads as wl
from .run import Settings, add_speedups, conv_row, conv_total, matmul_row, roundtrip_rows, transfer_rows

OPS = ("matmul", "conv2d", "transfer", "pipeline", "backward")
DEFAULT_OPS = ("matmul", "conv2d", "transfer", "pipeline")  # backward (training) is opt-in: it triples the conv time


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xdev.bench", description=__doc__)
    p.add_argument("--backends",
                   help=f"comma-separated selectors (default: every available of {', '.join(BACKEND_NAMES)})")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS),
                   help="comma-separated: matmul, conv2d, transfer, pipeline, backward (VGG-16 forward + backward "
                        "passes interleaved; default: matmul,conv2d,transfer,pipeline)")
    p.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    p.add_argument("--quick", action="store_true", help="fewer sizes, one conv algorithm per device, shorter timing")
    p.add_argument("--repeat", type=int, help="fixed number of timed repeats (default: adaptive, at least 3)")
    p.add_argument("--sizes", help="comma-separated n for the n x n x n matmul sweep")
    p.add_argument("--image", type=int, default=224, help="VGG-16 input size (default 224, the real network)")
    p.add_argument("--batch", type=int, help="VGG-16 batch (default: 1 on CPUs, 16 on GPUs)")
    p.add_argument("--json", metavar="FILE", help="write {machine, results} as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG: GFLOP/s vs size, VGG-16 per layer, transfers (and FILE-pipeline.png: the timeline)")
    p.add_argument("--dask", type=int, metavar="N",
                   help="xdev.dask on N local workers vs one process: blocked matmul (--sizes n, --dask-chunk c) "
                        "and VGG-16 conv (--batch, --image); needs xdev[dask]")
    p.add_argument("--dask-chunk", type=int, metavar="C", help="--dask matmul chunk edge (default n/4)")
    a = p.parse_args(argv)
    a.ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    bad = [o for o in a.ops if o not in OPS]
    if bad:
        p.error(f"unknown op(s) {', '.join(bad)}; choose from {', '.join(OPS)}")
    if a.repeat is not None and a.repeat < 1:
        p.error("--repeat must be at least 1")
    return a


def plan(a: argparse.Namespace, dev) -> list[tuple[str, Any]]:
    """(label, thunk returning result rows) for one device."""
    steps: list[tuple[str, Any]] = []
    if "matmul" in a.ops:
        sizes = wl.MATMUL_SIZES_QUICK if a.quick else wl.MATMUL_SIZES
        if a.sizes:
            sizes = [int(s) for s in a.sizes.split(",")]
        for n in sizes:
            steps.append((f"matmul {n}", lambda n=n: [matmul_row(dev, a.settings, n, n, n, "square")]))
        from .clblast_rows import clblast_row, clblast_unavailable

        # GPUs only: CLBlast's untuned CPU kernels ran at ~1 GFLOP/s on PoCL (minutes per 4096^3).
        if (dev.backend == "opencl" and not dev.is_cpu and clblast_unavailable(dev) is None
                and a.settings.dtype.name in ("float32", "float64")):
            for n in sizes:
                steps.append((f"matmul {n} clblast", lambda n=n: [clblast_row(dev, a.settings, n, n, n)]))
        M, K, N = wl.SKINNY_QUICK if (a.quick or a.sizes) else wl.SKINNY
        steps.append((f"matmul {M}x{K}x{N}", lambda: [matmul_row(dev, a.settings, M, K, N, "skinny")]))
    if "conv2d" in a.ops:
        batch = a.batch or (1 if dev.is_cpu else 16)
        algos = ["auto"] if a.quick else list(dev.conv_algorithms)
        for algo in algos:
            layers = wl.vgg16(batch, a.image)
            acc: list[dict[str, Any]] = []
            for i, layer in enumerate(layers):
                def step(layer=layer, algo=algo, acc=acc, last=i == len(layers) - 1):
                    row = conv_row(dev, a.settings, layer, algo)
                    acc.append(row)
                    return [row] + ([conv_total(acc, dev, a.settings)] if last else [])
                steps.append((f"conv2d {algo} {layer.name}", step))
    if "backward" in a.ops:
        from . import backward

        batch = a.batch or (1 if dev.is_cpu else 16)
        algos = ["auto"] if a.quick else list(dev.conv_algorithms)
        steps += backward.steps(dev, a.settings, wl.vgg16(batch, a.image), algos)
    if "transfer" in a.ops:
        for nb in (wl.TRANSFER_BYTES_QUICK if a.quick else wl.TRANSFER_BYTES):
            steps.append((f"transfer {nb} B", lambda nb=nb: transfer_rows(dev, a.settings, nb)
                          + pipeline.transfer_rows(dev, a.settings, nb)))
        for n in (wl.ROUNDTRIP_SIZES_QUICK if a.quick else wl.ROUNDTRIP_SIZES):
            steps.append((f"round trip {n}", lambda n=n: roundtrip_rows(dev, a.settings, n)))
    if "pipeline" in a.ops:
        steps.append(("pipeline", lambda: pipeline.pipeline_rows(
            dev, a.settings, a.quick, batch=a.batch, image=a.image if a.image != 224 else None)))
    return steps


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.dask is not None:
        from .dask_bench import run

        return run(a)
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        raise SystemExit('python -m xdev.bench needs rich and matplotlib: pip install "xdev[bench]"') from None
    from . import report

    console = Console() if Console().is_terminal else Console(width=120)
    status = xdev.available_backends()
    # By default every backend: the unavailable ones are listed with their reasons, so a
    # missing backend is never just absent from the report.
    wanted = [s.strip() for s in a.backends.split(",")] if a.backends else list(status)
    devices, skipped = [], []
    for spec in wanted:
        name = spec.split(":")[0].lower()
        if name in status and not status[name].available:
            skipped.append({"backend": spec, "reason": status[name].reason})
            continue
        try:
            devices.append(get_device(spec))
        except (xdev.BackendUnavailable, ValueError) as e:
            skipped.append({"backend": spec, "reason": str(e)})
    dtype = np.dtype(a.dtype)
    supported = []
    for dev in devices:
        try:
            dev.check_dtype(dtype)
            supported.append(dev)
        except TypeError as e:
            skipped.append({"backend": dev.key, "reason": str(e)})
    devices = supported
    if not devices:
        # Asked for backends none of which can run: say why and fail, never "0 results".
        for s in skipped:
            console.print(f"{s['backend']}: unavailable: {s['reason']}", markup=False)
        console.print("nothing to measure: none of the requested backends is available "
                      "(python -m xdev.info says how to install one)", markup=False)
        return 1

    doc_machine = mach.machine(devices, a.dtype)
    cpu = doc_machine["cpu"]
    calibrated = None
    for dev in devices:
        calibrated = dev.peak_gflops(dtype) if dev.is_cpu else None
        if calibrated is not None:  # a device that calibrates the CPU (OpenCL on the CPU)
            break
    a.settings = Settings(dtype, 0.15 if a.quick else 0.5, a.repeat)
    for dev, info in zip(devices, doc_machine["devices"]):
        peak, how = mach.peak_gflops(dev, a.dtype, cpu, calibrated)
        a.settings.peak[dev.key] = (peak, how)
        info["peak_gflops"], info["peak_method"] = peak, how
    report.header(console, doc_machine, skipped)

    steps = [(dev, label, fn) for dev in devices for label, fn in plan(a, dev)]
    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("starting", total=len(steps))
        previous = None
        for dev, label, fn in steps:
            if previous is not None and dev is not previous:
                # Let the previous backend's worker threads (BLAS, PoCL) go idle first:
                # spinning threads of one backend slow the next one down.
                time.sleep(0.5)
            previous = dev
            progress.update(task, description=f"{dev.key}: {label}")
            results.extend(fn())
            progress.advance(task)
    for r in results:
        if r["op"] == "conv2d":
            r.setdefault("pass", "forward")
    add_speedups(results)
    report.tables(console, results)
    pipeline.table(console, results)
    if "backward" in a.ops:
        from . import backward

        backward.tables(console, results)
    console.print(f"[dim]{len(results)} results in {time.perf_counter() - t_start:.0f} s[/dim]")
    doc = {"machine": doc_machine, "config": {k: v for k, v in vars(a).items() if k != "settings"},
           "skipped": skipped, "published": wl.PUBLISHED, "results": results}
    if "backward" in a.ops:
        from .backward import PUBLISHED_TRAIN

        doc["published_train"] = PUBLISHED_TRAIN
    if a.json:
        report.write_json(a.json, doc)
        console.print(f"wrote {a.json}")
    if a.plot:
        if any(r["op"] != "pipeline" for r in results):
            report.plot(a.plot, results)
            console.print(f"wrote {a.plot}")
        timeline = a.plot.rsplit(".", 1)[0] + "-pipeline.png"
        if pipeline.plot_timeline(timeline, results):
            console.print(f"wrote {timeline}")
    return 0
