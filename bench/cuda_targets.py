"""The CUDA targets on one NVIDIA GPU, each with its verdict: xdev against torch, CuPy and cuBLAS
in one process, interleaved.

    python bench/cuda_targets.py [--out DIR] [--budget-s 240] [--only SECTIONS] [--dry-run]

Targets (ratio = other's time / xdev's time, so >= means xdev is at least that fast; host
costs and errors are xdev / other, so <= means at most that much):
  vgg16-fp32-strict      VGG-16's 13 conv layers, batch 16, float32, no TF32          >= 0.95 x torch
  vgg16-tf32             the same with XDEV_CUDA_TF32=1 and no other flag             >= 0.95 x torch
  vgg16-fp16-cl          float16, channels-last input and weight, no flag             >= 0.95 x torch
  vgg16-*-error          worst |xdev - float64 reference| / the mode's bound, over
                         every element of the 13 layers of that run                   <= 1
  conv-host-cudnn        host cost per call, conv2d 1x3x32x32 * 8x3x3x3 float32       <= 3 x torch F.conv2d
                         (moonshot: 1.5)
  matmul-host-16, -128   host cost per call of a 16x16 / 128x128 float32 matmul       <= 1.0 x cupy.matmul
  opencl-sgemm-untuned   float32 GEMM 4096^3 through xdev's OpenCL backend on the
                         same GPU (NVIDIA OpenCL), no xdev.tune run                   >= 0.8 x cuBLAS
  pipeline-upload        the pipeline's upload stage (9.6 MB batches from disk) vs
                         the pinned host-to-device rate, same benchmark run           >= 0.8 x pinned
  vgg16-fwd-bwd          VGG-16 conv forward + backward (bench/gpu_backward.py)       >= 0.9 x torch
  conv1_1-fwd-bwd        its 3-input-channel layer alone                              >= 0.8 x torch
  contract-*-error       worst error / bound of the test suite's CUDA checks per
                         numeric mode, from the XDEV_TEST_ERROR_LOG files of a test
                         run (--error-log FILE, repeatable)                           <= 1

Sections (--only, comma-separated): host, fp32, tf32, fp16, fwdbwd, opencl, pipeline
(and always the error logs given with --error-log; none given: those targets are not measured).

Method: convolution times come from CUDA events around each call, after warm-up (xdev's first
call autotunes: that search time is reported as first-call time, never in the medians), as
the median of interleaved rounds (xdev, torch, xdev, torch, ...); a VGG total is the sum of
per-layer medians. torch runs with cudnn.benchmark=True and TF32 exactly when xdev has it.
Host costs: 2,000 calls then one synchronize, wall clock per call, five interleaved rounds,
median. Both sides see the same device buffers (torch wraps xdev's CuPy arrays through
__cuda_array_interface__). The error check compares each layer's output with a float64
reference of the same operands (torch's float64 convolution, else xdev's direct kernel in
float64) against (K + 2) u_acc |x| * |w| + u_out |y| (the test suite's bound, u_acc from
Device.acc_dtype). Every row says its numeric mode, whether Winograd/FFT was allowed, and the
layout. Results: cuda_targets.json in --out (default $OUT, else bench/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
import xdev  # noqa: E402

from xdev.bench.workloads import vgg16  # noqa: E402

from cuda_host_cost import cuda_status, per_call as host_cost  # noqa: E402  (bench/, on sys.path above)

TARGETS = {
    "vgg16-fp32-strict": (">=", 0.95),
    "vgg16-tf32": (">=", 0.95),
    "vgg16-fp16-cl": (">=", 0.95),
    "vgg16-fp32-strict-error": ("<=", 1.0),
    "vgg16-tf32-error": ("<=", 1.0),
    "vgg16-fp16-cl-error": ("<=", 1.0),
    "conv-host-cudnn": ("<=", 3.0),
    "matmul-host-16": ("<=", 1.0),
    "matmul-host-128": ("<=", 1.0),
    "opencl-sgemm-untuned": (">=", 0.8),
    "pipeline-upload": (">=", 0.8),
    "vgg16-fwd-bwd": (">=", 0.9),
    "conv1_1-fwd-bwd": (">=", 0.8),
    "contract-strict-fp32-error": ("<=", 1.0),
    "contract-tf32-error": ("<=", 1.0),
    "contract-fp16-error": ("<=", 1.0),
}
MOONSHOT = {"conv-host-cudnn": 1.5}
SECTIONS = ("host", "fp32", "tf32", "fp16", "fwdbwd", "opencl", "pipeline")


def verdict(name: str, ratio: float | None) -> dict[str, Any]:
    op, bound = TARGETS[name]
    met = None if ratio is None else (ratio >= bound if op == ">=" else ratio <= bound)
    return {"target": f"{op} {bound}", "ratio": ratio, "met": met}


class Run:
    def __init__(self, budget_s: float, fake: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.budget = budget_s
        self.fake = fake  # --fake: the code paths run, the figures mean nothing and get no verdict
        self.results: dict[str, Any] = {}

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def report(self, name: str, ratio: float | None, detail: str, **extra: Any) -> None:
        v = verdict(name, None if self.fake else ratio)
        if self.fake:
            v["ratio"] = ratio
            detail = f"fake CuPy and cuDNN, figures meaningless: {detail}"
        mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[v["met"]]
        r = "n/a" if ratio is None else f"{ratio:.4g}"
        if name in MOONSHOT and ratio is not None:
            detail += f"; moonshot <= {MOONSHOT[name]}: {'MET' if ratio <= MOONSHOT[name] else 'not met'}"
        print(f"TARGET {name:28s} ratio {r:>7s} (need {v['target']}): {mark}  -- {detail}", flush=True)
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


def interleaved(fns: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """Median of each measurement over rounds run A, B, A, B, ..."""
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            out[k].append(f())
    return {k: statistics.median(v) for k, v in out.items()}


# ---- the error check -------------------------------------------------------------------------------
UNIT_ROUNDOFF = {"float16": 2.0**-11, "float32": 2.0**-24, "float64": 2.0**-53}


def worst_error_ratio(dev: Any, torch: Any, y: Any, x: Any, w: Any, b: Any) -> float:
    """max |y - ref| / ((K + 2) u_acc (|x| * |w| + |b|) + u_out |ref| + tiny) over every element."""
    import cupy

    dtype = np.dtype(x.dtype)
    K = x.shape[1] * w.shape[2] * w.shape[3] + 1
    u_acc = UNIT_ROUNDOFF[np.dtype(dev.acc_dtype(dtype)).name]
    u_out = UNIT_ROUNDOFF[dtype.name]
    tiny = float(np.finfo(dtype).smallest_subnormal)
    x64, w64, b64 = (cupy.ascontiguousarray(a.data).astype(np.float64) for a in (x, w, b))
    if torch is not None:
        f = torch.nn.functional.conv2d
        tx, tw, tb = (torch.as_tensor(a, device="cuda") for a in (x64, w64, b64))
        with torch.no_grad():
            ref = cupy.asarray(f(tx, tw, tb, padding=1))
            ref_abs = cupy.asarray(f(tx.abs(), tw.abs(), tb.abs(), padding=1))
    else:
        conv = lambda a, c, d: xdev.conv2d(xdev.Array._wrap(a, dev), xdev.Array._wrap(c, dev),  # noqa: E731
                                           xdev.Array._wrap(d, dev), padding=1, algorithm="direct").data
        ref, ref_abs = conv(x64, w64, b64), conv(cupy.abs(x64), cupy.abs(w64), cupy.abs(b64))
    err = cupy.abs(y.data.astype(np.float64) - ref)
    bound = (K + 2) * u_acc * ref_abs + u_out * cupy.abs(ref) + tiny
    return float(cupy.max(err / bound))


# ---- VGG-16 per numeric mode ------------------------------------------------------------------------
def vgg(run: Run, name: str, dtype: str, torch: Any, env: dict[str, str], channels_last: bool) -> None:
    """VGG-16 conv layers at batch 16, xdev cuDNN vs torch, one numeric mode; and the error check."""
    import cupy

    saved = {k: os.environ.get(k) for k in (*env, "XDEV_CUDNN_FAST")}
    os.environ.pop("XDEV_CUDNN_FAST", None)  # "no flags": the numeric mode decides
    os.environ.update(env)
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
        worst = 0.0
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
            y = fx()
            dev.synchronize()
            first_xdev += time.perf_counter() - t0
            info = dev.conv_numerics("cudnn", np.dtype(dtype))
            err = worst_error_ratio(dev, torch, y, x, w, b)
            worst = max(worst, err)
            del y
            entry = {"layer": layer.name, "xdev_numerics": info["numerics"], "fx": fx, "cudnn": dev.cudnn_choice(),
                     "err_over_bound": err}
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
                                  "xdev_numerics": e["xdev_numerics"], "cudnn": e["cudnn"],
                                  "err_over_bound": e["err_over_bound"]})
        xs = sum(r["xdev_ms"] for r in per_layer)
        ts = sum(r["torch_ms"] for r in per_layer) if torch is not None else None
        ratio = ts / xs if ts else None
        modes = sorted({r["xdev_numerics"] for r in per_layer})
        torch_mode = ("torch: cudnn.benchmark=True, allow_tf32=" + str(torch.backends.cudnn.allow_tf32)
                      + (", channels_last" if channels_last else "")) if torch is not None else "torch not importable"
        flags = " ".join(f"{k}={v}" for k, v in env.items()) or "no XDEV_ flags"
        detail = (f"xdev {xs:.2f} ms vs torch {ts:.2f} ms" if ts else f"xdev {xs:.2f} ms") + \
            f" ({flags}); xdev first calls (plan search) {first_xdev:.1f} s, torch {first_torch:.1f} s; " \
            f"xdev [{'; '.join(modes)}]; {torch_mode}"
        run.report(name, ratio, detail, xdev_ms=xs, torch_ms=ts, layers=per_layer, xdev_first_call_s=first_xdev,
                   torch_first_call_s=first_torch, env=env, torch_mode=torch_mode)
        worst_layer = max(per_layer, key=lambda r: r["err_over_bound"])
        run.report(f"{name}-error", worst,
                   f"worst error / bound {worst:.3g} at {worst_layer['layer']} ({worst_layer['xdev_numerics']}; "
                   f"u_acc of {np.dtype(dev.acc_dtype(np.dtype(dtype))).name}, reference "
                   f"{'torch float64' if torch is not None else 'xdev direct float64'})",
                   per_layer={r["layer"]: r["err_over_bound"] for r in per_layer})
        del layers
        cupy.get_default_memory_pool().free_all_blocks()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: Any) -> None:
        return None


# ---- host cost per call ----------------------------------------------------------------------------
def host_costs(run: Run, torch: Any, calls: int = 2000) -> None:
    import cupy

    dev = xdev.asarray(np.zeros(1, np.float32), backend="cuda")._dev
    sync = dev.synchronize
    for n in (16, 128):
        a = xdev.asarray(np.random.default_rng(n).standard_normal((n, n)).astype(np.float32), backend="cuda")
        b = xdev.asarray(np.random.default_rng(n + 1).standard_normal((n, n)).astype(np.float32), backend="cuda")
        ca, cb = a.data, b.data
        fx = lambda a=a, b=b: xdev.matmul(a, b)  # noqa: E731
        fc = lambda ca=ca, cb=cb: cupy.matmul(ca, cb)  # noqa: E731
        fns = {"xdev": lambda: host_cost(fx, sync, calls), "cupy": lambda: host_cost(fc, sync, calls)}
        if torch is not None:
            ta, tb = torch.as_tensor(ca, device="cuda"), torch.as_tensor(cb, device="cuda")
            fns["torch"] = lambda ta=ta, tb=tb: host_cost(lambda: torch.matmul(ta, tb), sync, calls)
        fx(), fc()
        med = interleaved(fns, 5)
        us = {k: v * 1e6 for k, v in med.items()}
        run.report(f"matmul-host-{n}", med["xdev"] / med["cupy"],
                   ", ".join(f"{k} {v:.1f} us/call" for k, v in us.items()) + f" (float32, {calls} calls + 1 sync)",
                   us_per_call=us)
    x = xdev.asarray(np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32), backend="cuda")
    w = xdev.asarray(np.random.default_rng(4).standard_normal((8, 3, 3, 3)).astype(np.float32), backend="cuda")
    fns = {algo: (lambda algo=algo: host_cost(lambda: xdev.conv2d(x, w, algorithm=algo), sync, calls))
           for algo in dev.conv_algorithms}
    if torch is not None:
        tx, tw = torch.as_tensor(x.data, device="cuda"), torch.as_tensor(w.data, device="cuda")
        fns["torch"] = lambda: host_cost(lambda: torch.nn.functional.conv2d(tx, tw), sync, calls)
    choice = None
    for algo in dev.conv_algorithms:
        xdev.conv2d(x, w, algorithm=algo)
        if algo == "cudnn":
            choice = dev.cudnn_choice()  # which execute form the cuDNN calls use, and why not the others
    med = interleaved(fns, 5)
    us = {k: v * 1e6 for k, v in med.items()}
    ratio = med["cudnn"] / med["torch"] if ("cudnn" in med and "torch" in med) else None
    form = "" if not choice else (f"; cuDNN execute form {choice.get('execute')}, fallbacks "
                                  f"{choice.get('execute_fallbacks')}, dropped {choice.get('execute_dropped')}")
    run.report("conv-host-cudnn", ratio, ", ".join(f"{k} {v:.1f} us/call" for k, v in us.items())
               + f" (1x3x32x32 * 8x3x3x3 float32, {calls} calls + 1 sync){form}", us_per_call=us, cudnn=choice)


# ---- VGG-16 forward + backward (bench/gpu_backward.py) ---------------------------------------------
def fwd_bwd(run: Run, torch: Any) -> None:
    import gpu_backward

    if torch is None:
        for n in ("vgg16-fwd-bwd", "conv1_1-fwd-bwd"):
            run.report(n, None, "torch (the yardstick) is not importable with CUDA")
        return
    from xdev._registry import get_device

    dev = get_device("cuda")
    res = gpu_backward.measure(dev, torch, 16, 224, "float32", 5, log=lambda s: print(s, flush=True))
    mode = f"float32 strict, batch 16, torch {res['torch_mode']}, median of {res['repeat']} interleaved rounds"
    run.report("vgg16-fwd-bwd", res["torch_over_xdev"],
               f"xdev {res['xdev_ms']:.1f} ms vs torch {res['torch_ms']:.1f} ms ({mode})", **res)
    one = next(r for r in res["rows"] if r["layer"] == "conv1_1")
    run.report("conv1_1-fwd-bwd", one["torch_ms"] / one["xdev_ms"],
               f"xdev {one['xdev_ms']:.2f} ms vs torch {one['torch_ms']:.2f} ms (16x3x224x224 * 64x3x3x3)", row=one)


# ---- OpenCL sgemm on the same GPU, untuned ---------------------------------------------------------
def opencl_sgemm(run: Run, n: int = 4096, selector: str = "opencl:nvidia") -> None:
    """xdev's OpenCL float32 GEMM n^3 against xdev's cuBLAS matmul, on a fresh cache (no xdev.tune)."""
    st = xdev.available_backends().get("opencl")
    if st is None or not st.available:
        run.report("opencl-sgemm-untuned", None, f"opencl unavailable: {getattr(st, 'reason', 'not registered')}")
        return
    from xdev._registry import get_device

    cu = get_device("cuda")
    try:
        ocl = get_device(selector)
    except Exception as e:
        run.report("opencl-sgemm-untuned", None, f"no OpenCL device {selector!r}: {type(e).__name__}: {e}")
        return
    info = ocl.info()
    sources = {k: v for k, v in info.items() if "source" in k or "provenance" in k or k.startswith("params")}
    rng = np.random.default_rng(n)
    ha = rng.standard_normal((n, n)).astype(np.float32)
    hb = rng.standard_normal((n, n)).astype(np.float32)
    sides = {}
    for name, dev in (("opencl", ocl), ("cublas", cu)):
        a, b = xdev.asarray(ha, backend=dev.key), xdev.asarray(hb, backend=dev.key)
        fn = lambda a=a, b=b: xdev.matmul(a, b)  # noqa: E731
        b0 = dev.build_seconds
        fn()
        dev.synchronize()
        sides[name] = (dev, fn, dev.build_seconds - b0)
    times = interleaved({k: (lambda d=d, f=f: statistics.median(d.elapsed(f, 3))) for k, (d, f, _b) in sides.items()},
                        5)
    tf = {k: 2 * n**3 / v / 1e12 for k, v in times.items()}
    run.report("opencl-sgemm-untuned", times["cublas"] / times["opencl"],
               f"OpenCL {tf['opencl']:.1f} TFLOP/s vs cuBLAS {tf['cublas']:.1f} TFLOP/s, float32 {n}^3 "
               f"({ocl.name}; parameters: {json.dumps(sources) if sources else 'source not reported'}; "
               f"OpenCL build {sides['opencl'][2]:.1f} s)", tflops=tf, params=sources)


# ---- the pipeline's upload stage against pinned transfers ------------------------------------------
def pipeline_upload(run: Run, out: Path) -> None:
    """python -m xdev.bench --ops pipeline,transfer in a child; upload stage GB/s / pinned H2D GB/s."""
    path = out / "cuda_targets_pipeline.json"
    cmd = [sys.executable, "-m", "xdev.bench", "--backends", "cuda", "--ops", "pipeline,transfer", "--quick",
           "--json", str(path)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30, min(150, run.left() - 10)),
                           cwd=REPO, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                               [str(REPO), os.environ.get("PYTHONPATH", "")])})
    except subprocess.TimeoutExpired:
        run.report("pipeline-upload", None, f"{' '.join(cmd[1:])} timed out")
        return
    if r.returncode != 0 or not path.exists():
        said = (r.stderr.strip() or r.stdout.strip())[-400:]
        run.report("pipeline-upload", None, f"the benchmark failed (exit {r.returncode}): {said}")
        return
    doc = json.loads(path.read_text())
    rows = doc.get("results", doc.get("rows", doc)) if isinstance(doc, dict) else doc
    rows = [r for r in rows if isinstance(r, dict)]
    up = [r for r in rows if r.get("op") == "pipeline" and r.get("stage", r.get("algorithm")) == "upload"]
    if up and up[0].get("vs_pinned") is not None:
        # The benchmark measured both in the same rounds: the staged upload against a plain
        # upload of the same batch from pinned memory (its own verdict says whether the
        # difference from 0.8 is within the spread).
        u = up[0]
        run.report("pipeline-upload", u["vs_pinned"],
                   f"staged upload {u.get('gbps', float('nan')):.1f} GB/s, {u['vs_pinned']:.2f}"
                   f"±{u.get('vs_pinned_spread', float('nan')):.2f}x a plain upload from pinned memory "
                   f"({(u.get('batch_bytes') or 0) / 1e6:.1f} MB batches; benchmark verdict "
                   f"{u.get('upload_target')})", upload=u)
        return
    pinned = [r for r in rows if r.get("op") == "transfer" and r.get("algorithm") == "host-to-device pinned"]
    if not up or not pinned:
        run.report("pipeline-upload", None, f"no upload-stage or pinned host-to-device row in {path.name}")
        return
    batch = up[0].get("batch_bytes") or 0
    ref = min(pinned, key=lambda r: abs((r.get("bytes") or 0) - batch))  # the pinned size nearest the batch
    ratio = up[0]["gbps"] / ref["gbps"]
    run.report("pipeline-upload", ratio,
               f"upload stage {up[0]['gbps']:.1f} GB/s ({batch / 1e6:.1f} MB batches) vs pinned host-to-device "
               f"{ref['gbps']:.1f} GB/s ({(ref.get('bytes') or 0) / 1e6:.1f} MB), same run", upload=up[0],
               pinned=ref)


# ---- the test suite's errors per numeric mode (tests/tolerance.py's XDEV_TEST_ERROR_LOG) ------------
def _mode(acc: str, out: str) -> str:
    if out == "float32":
        return "tf32" if acc == "float16" else "strict-fp32"
    return {"float16": "fp16", "float64": "fp64"}.get(out, out)


def contract_errors(run: Run, logs: list[str]) -> None:
    import re

    worst: dict[str, dict[str, Any]] = {}
    lines = 0
    for path in logs:
        try:
            text = Path(path).read_text()
        except OSError as e:
            print(f"error log {path}: {e}")
            continue
        for line in text.splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if " on cuda" not in e.get("what", ""):
                continue  # another backend's check
            lines += 1
            mode = _mode(e["acc"], e["out"])
            m = re.search(r"'algorithm': '(\w+)'", e["what"])
            algo = m.group(1) if m else ("cudnn" if "cudnn" in e["what"] else "?")
            w = worst.setdefault(mode, {"checks": 0, "ratio": 0.0, "what": "", "by_algorithm": {}})
            w["checks"] += 1
            w["by_algorithm"][algo] = max(w["by_algorithm"].get(algo, 0.0), e["ratio"])
            if e["ratio"] >= w["ratio"]:
                w["ratio"], w["what"] = e["ratio"], e["what"]
    for mode in ("strict-fp32", "tf32", "fp16"):
        name = f"contract-{mode}-error"
        w = worst.get(mode)
        if w is None:
            run.report(name, None, f"no CUDA check in this mode in the logs ({lines} CUDA checks read)" if logs else
                       "no test run's error log given (--error-log FILE: a CUDA test run with XDEV_TEST_ERROR_LOG)")
            continue
        algos = ", ".join(f"{k} {v:.3g}" for k, v in sorted(w["by_algorithm"].items()))
        run.report(name, w["ratio"], f"{w['checks']} checks; worst per algorithm: {algos}; worst: {w['what'][:200]}",
                   checks=w["checks"], by_algorithm=w["by_algorithm"], worst_check=w["what"])


# ---- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results"))
    ap.add_argument("--budget-s", type=float, default=240.0, help="skip the remaining sections past this")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"sections to run, of {', '.join(SECTIONS)}")
    ap.add_argument("--host-calls", type=int, default=2000, help="calls per host-cost measurement")
    ap.add_argument("--error-log", action="append", default=[], metavar="FILE",
                    help="an XDEV_TEST_ERROR_LOG file of a CUDA test run: its worst error / bound per numeric mode")
    ap.add_argument("--opencl-device", default="opencl:nvidia", help="the OpenCL device of opencl-sgemm-untuned")
    ap.add_argument("--sgemm-n", type=int, default=4096, help="its GEMM size (the target is for 4096)")
    ap.add_argument("--dry-run", action="store_true", help="check the script and list the targets; no GPU needed")
    ap.add_argument("--fake", action="store_true",
                    help="run the sections on bench/cuda_host_cost.py's do-nothing CuPy and cuDNN: the script's own "
                         "code paths without a GPU (figures meaningless)")
    a = ap.parse_args(argv)
    if a.fake:
        from cuda_host_cost import install_fakes  # noqa: PLC0415

        install_fakes()
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; choose among {', '.join(SECTIONS)}")
    print(f"xdev {xdev.__version__}, Python {platform.python_version()}")
    for k, (op, bound) in TARGETS.items():
        print(f"  target {k:28s} {op} {bound}" + (f" (moonshot {MOONSHOT[k]})" if k in MOONSHOT else ""))
    status = cuda_status()
    if a.dry_run or not status.available:
        print(f"cuda: {status.reason}")
        print(f"sections: {', '.join(only)}")
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
    run = Run(a.budget_s, fake=a.fake)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = xdev.asarray(np.zeros(1, np.float32), backend="cuda")._dev
    machine = {"device": dev.info(), "torch": None if torch is None else torch.__version__,
               "torch_cudnn": None if torch is None else torch.backends.cudnn.version(),
               "env": {k: v for k, v in os.environ.items() if k.startswith(("XDEV_", "CUDA_", "NVIDIA_"))}}
    print(json.dumps({k: machine["device"].get(k) for k in ("name", "cudnn", "cudnn_frontend", "cupy", "driver")}),
          "torch", machine["torch"], machine["torch_cudnn"], flush=True)
    sections = {
        "host": ("host costs", lambda: host_costs(run, torch, a.host_calls), ["matmul-host-16", "matmul-host-128", "conv-host-cudnn"]),
        "fp32": ("vgg16 fp32 strict", lambda: vgg(run, "vgg16-fp32-strict", "float32", torch, {}, False),
                 ["vgg16-fp32-strict", "vgg16-fp32-strict-error"]),
        "fp16": ("vgg16 fp16 channels-last", lambda: vgg(run, "vgg16-fp16-cl", "float16", torch, {}, True),
                 ["vgg16-fp16-cl", "vgg16-fp16-cl-error"]),
        "tf32": ("vgg16 tf32", lambda: vgg(run, "vgg16-tf32", "float32", torch, {"XDEV_CUDA_TF32": "1"}, False),
                 ["vgg16-tf32", "vgg16-tf32-error"]),
        "fwdbwd": ("vgg16 forward + backward", lambda: fwd_bwd(run, torch), ["vgg16-fwd-bwd", "conv1_1-fwd-bwd"]),
        "opencl": ("opencl sgemm untuned", lambda: opencl_sgemm(run, a.sgemm_n, a.opencl_device),
                   ["opencl-sgemm-untuned"]),
        "pipeline": ("pipeline upload", lambda: pipeline_upload(run, out), ["pipeline-upload"]),
    }
    for key in SECTIONS:
        label, fn, names = sections[key]
        if key not in only:
            continue
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
    contract_errors(run, a.error_log)  # without logs, its targets are reported as not measured
    path = out / "cuda_targets.json"
    path.write_text(json.dumps({"machine": machine, "targets": run.results,
                                "seconds": time.perf_counter() - run.t0}, indent=1, default=str))
    print(f"\n=== CUDA targets ({time.perf_counter() - run.t0:.0f} s) ===")
    for n, r in run.results.items():
        mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[r["met"]]
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.4g}"
        print(f"  {n:28s} {ratio:>7s}  need {r['target']:8s} {mark}")
    met = [n for n, r in run.results.items() if r["met"]]
    measured = [n for n, r in run.results.items() if r["met"] is not None]
    print(f"targets met: {len(met)} of {len(measured)} measured ({len(run.results)} reported, {len(TARGETS)} defined"
          f"{'; --fake: no verdicts' if a.fake else ''}); wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
