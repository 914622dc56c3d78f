"""The CUDA targets on one NVIDIA GPU: xdev against torch (and CuPy) in one process, interleaved.

    python bench/cuda_targets.py [--out DIR] [--budget-s 240] [--dry-run]

Targets (ratio = torch time / xdev time, so >= means xdev is at least that fast):
  vgg16-fp32-strict  VGG-16's 13 conv layers, batch 16, float32, no TF32   >= 0.90 x torch
                     (torch: cudnn.benchmark=True, allow_tf32=False; xdev: strict FP32, no Winograd/FFT)
  vgg16-tf32         the same with TF32 (xdev: XDEV_CUDA_TF32=1)             >= 0.85 x torch
  vgg16-fp16-cl      float16, channels-last input and weight on both sides   >= 0.80 x torch
  matmul-host-16     host cost per call of a 16x16 float32 matmul            <= 1.2 x cupy.matmul
  matmul-host-128    the same at 128x128                                     <= 1.2 x cupy.matmul
  conv-host-cudnn    host cost per call of conv2d 1x3x32x32 * 8x3x3x3        <= 3 x torch F.conv2d

Method: convolution times come from CUDA events around each call, after warm-up (xdev's first
call autotunes: that search time is reported as first-call time, never in the medians), as
the median of interleaved rounds (xdev, torch, xdev, torch, ...); a VGG total is the sum of
per-layer medians. Host costs: 2,000 calls then one synchronize, wall clock per call, five
interleaved rounds, median. Both sides see the same device buffers (torch wraps xdev's CuPy
arrays through __cuda_array_interface__). Every row says its numeric mode, whether
Winograd/FFT was allowed, and the layout. Results: cuda_targets.json in --out (default $OUT,
else bench/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import xdev  # noqa: E402

from xdev.bench.workloads import vgg16  # noqa: E402

TARGETS = {
    "vgg16-fp32-strict": (">=", 0.90),
    "vgg16-tf32": (">=", 0.85),
    "vgg16-fp16-cl": (">=", 0.80),
    "matmul-host-16": ("<=", 1.2),
    "matmul-host-128": ("<=", 1.2),
    "conv-host-cudnn": ("<=", 3.0),
}


def verdict(name: str, ratio: float | None) -> dict[str, Any]:
    op, bound = TARGETS[name]
    met = None if ratio is None else (ratio >= bound if op == ">=" else ratio <= bound)
    return {"target": f"{op} {bound}", "ratio": ratio, "met": met}


class Run:
    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def report(self, name: str, ratio: float | None, detail: str, **extra: Any) -> None:
        v = verdict(name, ratio)
        mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[v["met"]]
        r = "n/a" if ratio is None else f"{ratio:.3f}"
        print(f"TARGET {name:18s} ratio {r:>6s} (need {v['target']}): {mark}  -- {detail}", flush=True)
        self.results[name] = {**v, "detail": detail, **extra}


def cuda_timer() -> Callable[[Callable[[], Any], int], float]:
    import cupy

    start, end = cupy.cuda.Event(), cupy.cuda.Event()

    def t(fn: Callable[[], Any], n: int) -> float:
        """Seconds per call over n back-to-back calls, CUDA events on the current stream."""
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / n

    return t


def host_cost(fn: Callable[[], Any], sync: Callable[[], None], calls: int = 2000) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each measurement over rounds run A, B, A, B, ..."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(f())
    return {k: statistics.median(v) for k, v in out.items()}


def vgg(run: Run, name: str, dtype: str, torch: Any, env: dict[str, str], channels_last: bool) -> None:
    """VGG-16 conv layers at batch 16, xdev cuDNN vs torch, one numeric mode."""
    import cupy

    for k, v in env.items():
        os.environ[k] = v
    try:
        if torch is not None:
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = dtype == "float32" and env.get("XDEV_CUDA_TF32") == "1"
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
        tm = cuda_timer()
        dev = xdev.asarray(np.zeros(1, np.float32), backend="cuda")._dev
        rng = np.random.default_rng(0)
        layers = []
        first_xdev = first_torch = 0.0
        for layer in vgg16(16):
            shp_x = (16, layer.C, layer.H, layer.H)
            shp_w = (layer.O, layer.C, 3, 3)
            # Operands made on the GPU (host generation of 145 M values would cost seconds).
            x = cupy.random.uniform(-1, 1, shp_x, dtype=np.float32).astype(dtype)
            w = (cupy.random.uniform(-1, 1, shp_w, dtype=np.float32) * 0.1).astype(dtype)
            if channels_last:  # stored NHWC / KRSC, indexed (N, C, H, W) / (O, C, kH, kW)
                x = cupy.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
                w = cupy.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            x, w = xdev.Array._wrap(x, dev), xdev.Array._wrap(w, dev)
            b = xdev.asarray(rng.uniform(-1, 1, (layer.O,)).astype(dtype), backend="cuda")
            fx = lambda x=x, w=w, b=b: xdev.conv2d(x, w, b, padding=1, algorithm="cudnn")  # noqa: E731
            t0 = time.perf_counter()
            fx()
            dev.synchronize()
            first_xdev += time.perf_counter() - t0
            info = dev.conv_numerics("cudnn", np.dtype(dtype))
            entry = {"layer": layer.name, "xdev_numerics": info["numerics"], "fx": fx, "cudnn": dev.cudnn_choice()}
            if torch is not None:
                tx = torch.as_tensor(x.data, device="cuda")
                tw = torch.as_tensor(w.data, device="cuda")
                tb = torch.as_tensor(b.data, device="cuda")
                if channels_last:
                    assert tx.is_contiguous(memory_format=torch.channels_last)
                ft = lambda tx=tx, tw=tw, tb=tb: torch.nn.functional.conv2d(tx, tw, tb, padding=1)  # noqa: E731
                t0 = time.perf_counter()
                with torch.no_grad():
                    ft()
                torch.cuda.synchronize()
                first_torch += time.perf_counter() - t0
                entry["ft"] = ft
            layers.append(entry)
        per_layer = []
        with (torch.no_grad() if torch is not None else _null()):
            for e in layers:
                fns = {"xdev": lambda e=e: tm(e["fx"], 3)}
                if "ft" in e:
                    fns["torch"] = lambda e=e: tm(e["ft"], 3)
                tm(e["fx"], 1)
                if "ft" in e:
                    tm(e["ft"], 1)
                med = interleaved(fns, 5)
                per_layer.append({"layer": e["layer"], "xdev_ms": med["xdev"] * 1e3,
                                  "torch_ms": med.get("torch", float("nan")) * 1e3,
                                  "xdev_numerics": e["xdev_numerics"], "cudnn": e["cudnn"]})
        xs = sum(r["xdev_ms"] for r in per_layer)
        ts = sum(r["torch_ms"] for r in per_layer) if torch is not None else None
        ratio = ts / xs if ts else None
        modes = sorted({r["xdev_numerics"] for r in per_layer})
        torch_mode = ("torch: cudnn.benchmark=True, allow_tf32=" + str(torch.backends.cudnn.allow_tf32)
                      + (", channels_last" if channels_last else "")) if torch is not None else "torch not importable"
        detail = (f"xdev {xs:.2f} ms vs torch {ts:.2f} ms" if ts else f"xdev {xs:.2f} ms") + \
            f"; xdev first calls (plan search) {first_xdev:.1f} s, torch {first_torch:.1f} s; xdev [{'; '.join(modes)}]; {torch_mode}"
        run.report(name, ratio, detail, xdev_ms=xs, torch_ms=ts, layers=per_layer, xdev_first_call_s=first_xdev,
                   torch_first_call_s=first_torch, env=env, torch_mode=torch_mode)
        del layers
        cupy.get_default_memory_pool().free_all_blocks()
    finally:
        for k in env:
            os.environ.pop(k, None)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


def host_costs(run: Run, torch: Any) -> None:
    import cupy

    dev = xdev.asarray(np.zeros(1, np.float32), backend="cuda")._dev
    sync = dev.synchronize
    for n in (16, 128):
        a = xdev.asarray(np.random.default_rng(n).standard_normal((n, n)).astype(np.float32), backend="cuda")
        b = xdev.asarray(np.random.default_rng(n + 1).standard_normal((n, n)).astype(np.float32), backend="cuda")
        ca, cb = a.data, b.data
        fx = lambda a=a, b=b: xdev.matmul(a, b)  # noqa: E731
        fc = lambda ca=ca, cb=cb: cupy.matmul(ca, cb)  # noqa: E731
        fns = {"xdev": lambda: host_cost(fx, sync), "cupy": lambda: host_cost(fc, sync)}
        if torch is not None:
            ta, tb = torch.as_tensor(ca, device="cuda"), torch.as_tensor(cb, device="cuda")
            fns["torch"] = lambda ta=ta, tb=tb: host_cost(lambda: torch.matmul(ta, tb), sync)
        fx(), fc()
        med = interleaved(fns, 5)
        us = {k: v * 1e6 for k, v in med.items()}
        run.report(f"matmul-host-{n}", med["xdev"] / med["cupy"],
                   ", ".join(f"{k} {v:.1f} us/call" for k, v in us.items()) + " (float32, 2000 calls + 1 sync)",
                   us_per_call=us)
    x = xdev.asarray(np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32), backend="cuda")
    w = xdev.asarray(np.random.default_rng(4).standard_normal((8, 3, 3, 3)).astype(np.float32), backend="cuda")
    fns = {algo: (lambda algo=algo: host_cost(lambda: xdev.conv2d(x, w, algorithm=algo), sync))
           for algo in dev.conv_algorithms}
    if torch is not None:
        tx, tw = torch.as_tensor(x.data, device="cuda"), torch.as_tensor(w.data, device="cuda")
        fns["torch"] = lambda: host_cost(lambda: torch.nn.functional.conv2d(tx, tw), sync)
    for algo in dev.conv_algorithms:
        xdev.conv2d(x, w, algorithm=algo)
    med = interleaved(fns, 5)
    us = {k: v * 1e6 for k, v in med.items()}
    ratio = med["cudnn"] / med["torch"] if ("cudnn" in med and "torch" in med) else None
    run.report("conv-host-cudnn", ratio, ", ".join(f"{k} {v:.1f} us/call" for k, v in us.items())
               + " (1x3x32x32 * 8x3x3x3 float32, 2000 calls + 1 sync)", us_per_call=us)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the remaining sections past this")
    ap.add_argument("--dry-run", action="store_true", help="check the script and list the targets; no GPU needed")
    a = ap.parse_args(argv)
    print(f"xdev {xdev.__version__}, Python {platform.python_version()}")
    for k, (op, bound) in TARGETS.items():
        print(f"  target {k:18s} {op} {bound}")
    status = xdev.available_backends()["cuda"]
    if a.dry_run or not status.available:
        print(f"cuda: {status.reason}")
        if a.dry_run:
            print("dry run: nothing measured")
            return 0
        print("no CUDA GPU: nothing measured")
        return 1
    try:
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            torch = None
    except Exception as e:
        print(f"torch not importable ({type(e).__name__}: {e}): xdev alone, no yardstick")
        torch = None
    run = Run(a.budget_s)
    dev = xdev.asarray(np.zeros(1, np.float32), backend="cuda")._dev
    machine = {"device": dev.info(), "torch": None if torch is None else torch.__version__,
               "torch_cudnn": None if torch is None else torch.backends.cudnn.version(),
               "env": {k: v for k, v in os.environ.items() if k.startswith(("XDEV_", "CUDA_", "NVIDIA_"))}}
    print(json.dumps({k: machine["device"].get(k) for k in ("name", "cudnn", "cudnn_frontend", "cupy", "driver")}),
          "torch", machine["torch"], machine["torch_cudnn"], flush=True)
    sections = [
        ("host costs", lambda: host_costs(run, torch), ["matmul-host-16", "matmul-host-128", "conv-host-cudnn"]),
        ("vgg16 fp32 strict", lambda: vgg(run, "vgg16-fp32-strict", "float32", torch, {}, False), ["vgg16-fp32-strict"]),
        ("vgg16 fp16 channels-last", lambda: vgg(run, "vgg16-fp16-cl", "float16", torch, {}, True), ["vgg16-fp16-cl"]),
        ("vgg16 tf32", lambda: vgg(run, "vgg16-tf32", "float32", torch, {"XDEV_CUDA_TF32": "1"}, False),
         ["vgg16-tf32"]),
    ]
    for label, fn, names in sections:
        if run.left() < 20:
            for n in names:
                run.report(n, None, f"skipped: the {a.budget_s:.0f} s budget is spent")
            continue
        print(f"--- {label} (at {time.perf_counter() - run.t0:.0f} s)", flush=True)
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:
            import traceback

            traceback.print_exc()
            for n in names:
                if n not in run.results:
                    run.report(n, None, f"failed: {type(e).__name__}: {e}")
        print(f"    {label}: {time.perf_counter() - t0:.1f} s", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "cuda_targets.json"
    path.write_text(json.dumps({"machine": machine, "targets": run.results,
                                "seconds": time.perf_counter() - run.t0}, indent=1, default=str))
    met = [n for n, r in run.results.items() if r["met"]]
    print(f"targets met: {len(met)} of {len(TARGETS)} ({', '.join(met) or 'none'}); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
