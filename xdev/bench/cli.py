"""python -m xdev.bench: CPU vs CUDA vs OpenCL, measured on this machine."""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import xdev
from xdev._registry import BACKEND_NAMES, get_device
from xdev.contract import env

from . import machine as mach
from . import pipeline
from . import workloads as wl
from .meta import SCHEMA, run_block
from .noise import sample_load, summarize_load
from .progress import STARTUP_NOTICE, Ticker, with_notice
from .reference import REFERENCES
from .run import (TENSOR_MODES, Settings, Workload, add_speedups, arrange, conv_case, matmul_case, peak_fields,
                  roundtrip_case, run_workload, tensor_case, transfer_case)
from .sides import DeviceSide, Side
from .verdict import judge_load, verdicts



def _matmul(a: argparse.Namespace) -> list[Workload]:
    sizes = wl.MATMUL_SIZES_QUICK if a.quick else wl.MATMUL_SIZES
    out = []
    if a.sizes:
        sizes = a.sizes
    for n in sizes:
        out.append(Workload("matmul", f"matmul {n}", matmul_case(a.settings, n, n, n, "square")))
    from .clblast_rows import clblast_rows

    out.append(Workload("matmul", "matmul clblast", direct=lambda dev: clblast_rows(dev, a.settings, sizes)))
    if not a.sizes:  # --sizes names exactly the sizes to run; the skinny row comes with the default sweep
        M, K, N = wl.SKINNY_QUICK if a.quick else wl.SKINNY
        out.append(Workload("matmul", f"matmul {M}x{K}x{N}", matmul_case(a.settings, M, K, N, "skinny")))
    if a.settings.dtype == np.float32 and any(not d.is_cpu for d in a.devices):
        # On GPUs also the largest size in TF32 and float16, where cuBLAS uses tensor cores: claim 3
        # sets them beside OpenCL's rows in the same mode (or its best, saying what that ran on).
        n = max(sizes)
        for mode, dtype, tf32 in TENSOR_MODES:
            out.append(Workload("matmul", f"matmul {n} {mode}", tensor_case(a.settings, n, mode, dtype),
                                scope=lambda tf32=tf32: env.numeric_mode(tf32)))
    return out


def _conv2d(a: argparse.Namespace) -> list[Workload]:
    def algorithms(side: Side) -> list[str]:
        return ["auto"] if a.quick else list(side.conv_algorithms)

    def layer(i: int):
        # Batch per device: 1 on CPUs, 16 (the lecture's) on GPUs; the devices' calls of one
        # layer are still interleaved, and ratios compare throughput.
        return lambda side: wl.vgg16(a.batch or (1 if side.is_cpu else 16), a.image)[i]

    return [Workload("conv2d", f"conv2d {name}", conv_case(a.settings, layer(i), algorithms))
            for i, (name, *_) in enumerate(wl.VGG16)]


def _transfer(a: argparse.Namespace) -> list[Workload]:
    out = []
    for nb in (wl.TRANSFER_BYTES_QUICK if a.quick else wl.TRANSFER_BYTES):
        out.append(Workload("transfer", f"transfer {nb} B", transfer_case(a.settings, nb)))
        # pinned downloads and staged uploads (xdev.prefetch's buffers), measured per device
        out.append(Workload("transfer", f"transfer {nb} B pinned/staged",
                            direct=lambda dev, nb=nb: pipeline.transfer_rows(dev, a.settings, nb)))
    out += [Workload("transfer", f"round trip {n}", roundtrip_case(a.settings, n))
            for n in (wl.ROUNDTRIP_SIZES_QUICK if a.quick else wl.ROUNDTRIP_SIZES)]
    return out


def _backward(a: argparse.Namespace) -> list[Workload]:
    from . import backward

    def run(dev) -> list[dict[str, Any]]:
        layers = wl.vgg16(a.batch or (1 if dev.is_cpu else 16), a.image)
        algos = ["auto"] if a.quick else list(dev.conv_algorithms)
        return [row for _, step in backward.steps(dev, a.settings, layers, algos) for row in step()]
    # Its three passes are interleaved inside each layer (backward.py), per device.
    return [Workload("backward", "conv2d backward", direct=run)]


def _pipeline(a: argparse.Namespace) -> list[Workload]:
    return [Workload("pipeline", "pipeline", direct=lambda dev: pipeline.pipeline_rows(
        dev, a.settings, a.quick, batch=a.batch, image=a.image if a.image_given else None))]


# The benchmark's ops: name -> planner returning the workloads for the parsed arguments
# (a.devices, a.settings, a.quick ... are set). An op plugs in with one entry here. A
# Workload either has `prepare` (its calls are timed on every device, interleaved) or
# `direct` (it measures one device itself and returns rows; devices run one after another).
OPS: dict[str, Callable[[argparse.Namespace], list[Workload]]] = {
    "matmul": _matmul, "conv2d": _conv2d, "transfer": _transfer, "pipeline": _pipeline, "backward": _backward,
}
DEFAULT_OPS = ("matmul", "conv2d", "transfer", "pipeline")  # backward (training) is opt-in: it triples the conv time


def _positive(example: str) -> Callable[[str], int]:
    """argparse type: a positive integer, or an error (argparse names the flag) that says
    what was received."""
    def conv(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = 0
        if v < 1:
            raise argparse.ArgumentTypeError(f"expects a positive integer (e.g. {example}); "
                                             f"received {text!r}")
        return v
    return conv


def _sizes(text: str) -> list[int]:
    """argparse type of --sizes: comma-separated positive integers."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in parts if not t.isdigit() or int(t) < 1]
    if bad or not parts:
        raise argparse.ArgumentTypeError(
            f"expects comma-separated positive integers, the n of n x n x n matmuls "
            f"(e.g. --sizes 256,1024); received {text!r}" + (f" ({', '.join(map(repr, bad))} not one)" if bad else ""))
    return [int(t) for t in parts]


def check_output(flag: str, path: str) -> str | None:
    """Why ``path`` cannot be written (checked before anything is measured), or None.

    A real open, not os.access: root passes os.access on a read-only mount's files."""
    target = Path(path)
    if target.is_dir():
        return f"{flag} {path}: that is a folder; give a file name, e.g. {Path(path) / ('out' + target.suffix)}"
    if not target.parent.is_dir():
        return (f"{flag} {path}: the folder {str(target.parent)!r} does not exist; create it first "
                f"(mkdir -p {target.parent}) or give another path")
    existed = target.exists()
    try:
        with open(target, "ab"):
            pass
    except OSError as e:
        return f"{flag} {path}: cannot write there ({e.strerror}); give a path in a writable folder"
    if not existed:
        target.unlink()
    return None


def check_plot_format(path: str) -> str | None:
    """Why matplotlib cannot write ``path`` (its suffix names the format), or None."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return 'python -m xdev.bench --plot needs matplotlib: pip install "xdev[bench]"'
    kinds = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lstrip(".").lower()
    if suffix not in kinds:
        return (f"--plot {path}: the file name's suffix chooses the image format, and {suffix or '(none)'!r} "
                f"is not one matplotlib writes; use e.g. .png ({', '.join(sorted(kinds))})")
    return None


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m xdev.bench", description=__doc__,
                                epilog="python -m xdev.bench compare A.json B.json [...] [--plot F.png]: "
                                       "the rows two or more result files share, side by side")
    p.add_argument("--backends",
                   help=f"comma-separated selectors (default: every available of {', '.join(BACKEND_NAMES)})")
    p.add_argument("--ops", default=",".join(DEFAULT_OPS),
                   help="comma-separated: matmul, conv2d, transfer, pipeline, backward (VGG-16 forward + backward "
                        "passes interleaved; default: matmul,conv2d,transfer,pipeline)")
    p.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    p.add_argument("--quick", action="store_true", help="fewer sizes, one conv algorithm per device, shorter timing")
    p.add_argument("--repeat", type=_positive("5"), help="fixed number of timed repeats (default: adaptive, at least 3)")
    p.add_argument("--sizes", type=_sizes, help="comma-separated n for the n x n x n matmul sweep (only these)")
    p.add_argument("--image", type=_positive("224"), help="VGG-16 input size (default 224, the real network; the pipeline op's "
                   "CPU batch is 112 unless --image is given)")
    p.add_argument("--batch", type=_positive("16"), help="VGG-16 batch (default: 1 when a CPU device takes part, else 16)")
    p.add_argument("--reference", choices=list(REFERENCES), help="add PyTorch's matmul and conv2d as yardstick rows")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (schema: docs/bench.md)")
    p.add_argument("--plot", metavar="FILE.png", help="write a PNG: GFLOP/s vs size, VGG-16 per layer, transfers "
                   "(and FILE-pipeline.png: the pipeline timeline)")
    p.add_argument("--dask", type=_positive("2"), metavar="N",
                   help="xdev.dask on N local workers vs one process: blocked matmul (--sizes n, --dask-chunk c) "
                        "and VGG-16 conv (--batch, --image); needs xdev[dask]")
    p.add_argument("--dask-chunk", type=_positive("1024"), metavar="C", help="--dask matmul chunk edge (default n/4)")
    p.add_argument("--dask-defaults", action="store_true",
                   help="--dask with Dask's own configuration, not xdev.dask.COMPUTE_CONFIG (docs/dask.md)")
    a = p.parse_args(argv)
    # Whether --image was given: the pipeline op sizes its CPU batch smaller unless told.
    a.image_given = a.image is not None
    if a.image is None:
        a.image = 224
    a.ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    bad = [o for o in a.ops if o not in OPS]
    if bad:
        p.error(f"unknown op(s) {', '.join(bad)}; choose from {', '.join(OPS)}")
    # Output paths are checked now: a run must not measure for minutes and then fail to save.
    for flag, path in (("--json", a.json), ("--plot", a.plot)):
        why = path and (check_output(flag, path) or (flag == "--plot" and check_plot_format(path)))
        if why:
            p.error(why)
    return a


def _devices(a: argparse.Namespace, status: dict[str, Any], dtype: np.dtype
             ) -> tuple[list[Any], list[dict[str, Any]]]:
    """The devices to measure, and the skipped: unavailable backends, devices that cannot do
    ``dtype``, and devices present but not measured (``present: true``, with how to add them)."""
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
    supported = []
    for dev in devices:
        try:
            dev.check_dtype(dtype)
            supported.append(dev)
        except TypeError as e:
            skipped.append({"backend": dev.key, "reason": str(e)})
    keys = [d.key for d in supported]
    present = [k for name in dict.fromkeys(d.backend for d in supported) if name in status
               for k in status[name].devices if k not in keys and not any(s["backend"] == k for s in skipped)]
    if present:
        every = ",".join(keys + present)
        for k in present:
            skipped.append({"backend": k, "present": True, "reason": (
                f"present but not measured (a backend named without a device runs its first one); "
                f"include it with --backends {every}")})
    return supported, skipped


def recalibrate(results: list[dict[str, Any]], settings: Settings, calibrator: Any, dtype: np.dtype,
                doc_machine: dict[str, Any]) -> str | None:
    """Calibrate the CPU's peak again when a row on it came out above it: a calibration of
    3 x ~50 ms can meet another process's burst (on a 2-core VM one read half the rate
    measured before and after). The higher calibration is the peak; rows still above it stay
    flagged. The JSON keeps both (machine.devices[].peak_calibrations). Returns a line
    saying so when the peak changed."""
    if calibrator is None:
        return None
    first = calibrator.peak_gflops(dtype)
    keys = {k for k, (_, how) in settings.peak.items() if how.startswith("calibrated")}
    if not any(r.get("peak_error") and r["device"] in keys for r in results):
        return None
    second = calibrator.peak_gflops(dtype, fresh=True)
    peak = max(first, second)
    for d in doc_machine["devices"]:
        if d["device"] in keys:
            d["peak_calibrations"], d["peak_gflops"] = [first, second], peak
    for k in keys:
        settings.peak[k] = (peak, settings.peak[k][1])
    for r in results:
        if r["device"] in keys:
            r.update(peak_fields(r.get("gflops"), peak))
    if peak <= first:
        return None
    return (f"peak calibrated again after the run: {first:.0f} -> {second:.0f} GFLOP/s (rows were above the first "
            f"figure: it met another process); % peak uses {peak:.0f}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["compare"]:
        from .compare import main as compare_main

        return compare_main(args[1:])
    a = parse(args)
    if a.dask is not None:
        from .dask_bench import run

        return run(a, args)
    try:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        raise SystemExit('python -m xdev.bench needs rich and matplotlib: pip install "xdev[bench]"') from None
    from rich.markup import escape

    from . import report

    load_before = sample_load()
    t_main = time.perf_counter()
    tty = Console().is_terminal
    console = Console() if tty else Console(width=report.PIPED_WIDTH)
    say = (lambda text: console.print(f"[dim]{escape(text)}[/dim]"))
    status = with_notice(xdev.available_backends, say, STARTUP_NOTICE.format(cache=env.cache_dir()))
    dtype = np.dtype(a.dtype)
    devices, skipped = _devices(a, status, dtype)
    if not devices:
        # Asked for backends none of which can run: say why and fail, never "0 results".
        for s in skipped:
            console.print(f"{s['backend']}: unavailable: {s['reason']}", markup=False)
        console.print("nothing to measure: none of the requested backends is available "
                      "(python -m xdev.info says how to install one)", markup=False)
        return 1
    sides: list[Side] = [DeviceSide(d) for d in devices]
    refs: list[Side] = []
    if a.reference:
        refs, ref_skipped = REFERENCES[a.reference](sides)
        skipped.extend(ref_skipped)

    doc_machine = mach.machine(sides, a.dtype)
    cpu = doc_machine["cpu"]
    calibrated, calibrator = None, None
    for dev in devices:
        calibrated = dev.peak_gflops(dtype) if dev.is_cpu else None
        if calibrated is not None:  # a device that calibrates the CPU (OpenCL on the CPU)
            calibrator = dev
            break
    a.settings = Settings(dtype, 0.15 if a.quick else 0.5, a.repeat)
    a.settings.announce = say
    for dev, info in zip(devices, doc_machine["devices"]):
        peak, how = mach.peak_gflops(dev, a.dtype, cpu, calibrated)
        a.settings.peak[dev.key] = (peak, how)
        info["peak_gflops"], info["peak_method"] = peak, how
    by_key = {d.key: d for d in sides}
    for ref in refs:
        a.settings.peak[ref.key] = a.settings.peak.get(ref.beside, (None, ""))
        doc_machine["devices"].append(ref.info())
        by_key[ref.key] = ref
    report.header(console, doc_machine, skipped, load_before)

    a.devices = devices
    workloads = [w for op in a.ops for w in OPS[op](a)]
    # The load during the run is sampled from here: startup work (device proofs in child
    # processes, torch's import) is this run's, not another process's.
    load_start = sample_load()
    results: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    everyone = sides + refs
    ticker = None if tty else Ticker(t0=t_main)  # piped: plain progress lines instead of the bar
    a.settings.activity = ticker.doing if ticker else None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not tty) as progress, \
            (ticker.running() if ticker else contextlib.nullcontext()):
        task = progress.add_task("starting", total=len(workloads))
        for w in workloads:
            progress.update(task, description=f"{w.label} ({', '.join(d.key for d in everyone)}, interleaved)")
            rows = run_workload(w, everyone, a.settings)
            results.extend(rows)
            progress.advance(task)
            if ticker and rows:
                ticker.finished(w.label, list(dict.fromkeys(r["device"] for r in rows)))
    recalibrated = recalibrate(results, a.settings, calibrator, dtype, doc_machine)
    if recalibrated:
        say(recalibrated)
    results = arrange(results, a.settings, by_key)
    for r in results:
        if r["op"] == "conv2d":
            r.setdefault("pass", "forward")
    add_speedups(results)
    load = summarize_load(load_start, sample_load(), load_before.get("loadavg"))
    found = judge_load(verdicts(results, doc_machine["devices"], skipped), load)
    report.tables(console, results)
    pipeline.table(console, results)
    if "backward" in a.ops:
        from . import backward

        backward.tables(console, results)
    console.print(f"[dim]{len(results)} results in {time.perf_counter() - t_start:.0f} s[/dim]")
    report.summary(console, results, load)
    report.verdicts(console, found, load)
    run = run_block(args, load)
    run["settle"] = a.settings.settle.summary()
    doc = {"schema": SCHEMA, "run": run, "machine": doc_machine,
           "config": {k: v for k, v in vars(a).items() if k not in ("settings", "devices")},
           "skipped": skipped, "published": wl.PUBLISHED, "verdicts": found, "results": results}
    if "backward" in a.ops:
        from .backward import PUBLISHED_TRAIN

        doc["published_train"] = PUBLISHED_TRAIN
    if a.json:
        report.write_json(a.json, doc)
        console.print(f"wrote {a.json}")
    if a.plot:
        if any(r["op"] != "pipeline" for r in results):
            report.plot(a.plot, [r for r in results if r["op"] != "pipeline"], doc)
            console.print(f"wrote {a.plot}")
        timeline = a.plot.rsplit(".", 1)[0] + "-pipeline.png"
        if pipeline.plot_timeline(timeline, results):
            console.print(f"wrote {timeline}")
    return 0
