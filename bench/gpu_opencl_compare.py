"""CUDA vs OpenCL on one GPU, in one process with the sides interleaved, and the targets for OpenCL.

    python bench/gpu_opencl_compare.py --json results.json            # on the GPU machine
    python bench/gpu_opencl_compare.py --sizes 256 --image 32 --batch 1 --repeat 2   # any machine

Rows: float32 GEMM n^3 by cuBLAS, by xdev's OpenCL kernels and by CLBlast (when its library
loads); TF32 and float16 GEMM at the largest n by cuBLAS and by xdev's OpenCL in the same
mode (the tensor cores on both sides where xdev's tc family runs; the row says what ran); VGG-16's 13 convolutions at batch B by cuDNN (strict float32: XDEV_CUDA_TF32 and
XDEV_CUDNN_FAST unset), by xdev's OpenCL gemm and direct kernels, and what OpenCL `auto`
picks per layer. Each round times every side once (ABAB...), the reported time is the
median over rounds. A side that cannot run (no CUDA, no CLBlast) is listed with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import xdev
from xdev.bench.workloads import vgg16


def timed(dev, fn, inner: int) -> float:
    """Median seconds per call over `inner` calls (after one untimed call)."""
    fn()
    dev.synchronize()
    return statistics.median(dev.elapsed(fn, inner))


def interleave(sides: dict[str, tuple], rounds: int, inner: int) -> dict[str, dict]:
    """sides: name -> (dev, fn). Every round times each side once; median over rounds."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for name, (dev, fn) in sides.items():
            if name in errors:
                continue
            try:
                times[name].append(timed(dev, fn, inner))
            except Exception as e:  # noqa: BLE001 - one side failing must not hide the others
                errors[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
    out = {}
    for name in sides:
        if name in errors:
            out[name] = {"error": errors[name]}
        else:
            t = sorted(times[name])
            out[name] = {"median_s": statistics.median(t), "min_s": t[0], "max_s": t[-1], "rounds": len(t)}
    return out


def device(selector: str):
    st = xdev.available_backends()[selector.split(":")[0]]
    if not st.available:
        return None, st.reason
    try:
        return xdev.asarray(np.ones(1, np.float32), backend=selector)._dev, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--opencl", default="opencl", help="OpenCL selector (default: the default OpenCL device)")
    p.add_argument("--sizes", default="2048,4096")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--image", type=int, default=224)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds for GEMM (conv: rounds // 2 + 1)")
    p.add_argument("--repeat", type=int, default=3, help="timed calls per side per round")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    t_start = time.time()
    ocl, ocl_why = device(a.opencl)
    cuda, cuda_why = device("cuda")
    report: dict = {"opencl": ocl.info() if ocl else {"unavailable": ocl_why},
                    "cuda": cuda.info() if cuda else {"unavailable": cuda_why},
                    "env": {k: v for k, v in os.environ.items() if k.startswith("XDEV_")},
                    "gemm": [], "vgg16": {}, "targets": []}
    if ocl is None:
        print(f"OpenCL unavailable: {ocl_why}")
        return 1
    print(f"OpenCL: {ocl.key} {ocl.name} (family {ocl.family}, tuned: {bool(ocl.params.get('tuned'))})")
    print(f"  gemm_xl {ocl.params['gemm_xl']}\n  conv_xl {ocl.params['conv_xl']}")
    print(f"CUDA:   {cuda.key + ' ' + cuda.name if cuda else 'unavailable: ' + str(cuda_why)}")
    from xdev.backends.opencl import clblast

    cl_why = clblast.unavailable_reason()
    print(f"CLBlast: {clblast.library_path() or 'unavailable: ' + str(cl_why)}")
    report["clblast"] = clblast.library_path() or {"unavailable": cl_why}

    # -- float32 GEMM -------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    for n in (int(s) for s in a.sizes.split(",")):
        ha = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        hb = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        oa, ob = xdev.asarray(ha, backend=ocl.key), xdev.asarray(hb, backend=ocl.key)
        sides = {"opencl xdev": (ocl, lambda: xdev.matmul(oa, ob))}
        if cl_why is None:
            sides["opencl clblast"] = (ocl, lambda: clblast.gemm(ocl, oa._data, ob._data))
        if cuda:
            ca, cb = xdev.asarray(ha, backend=cuda.key), xdev.asarray(hb, backend=cuda.key)
            sides["cuda cublas"] = (cuda, lambda: xdev.matmul(ca, cb))
        res = interleave(sides, a.rounds, a.repeat)
        for name, r in res.items():
            if "median_s" in r:
                r["tflops"] = 2 * n**3 / r["median_s"] / 1e12
            report["gemm"].append({"n": n, "side": name, **r})
            print(f"gemm {n:5d}^3  {name:15s} " + (f"{r['median_s'] * 1e3:9.3f} ms  {r['tflops']:6.2f} TFLOP/s"
                                                   if "median_s" in r else r["error"]))
        del oa, ob
    # -- TF32 and float16 GEMM: tensor cores on both sides, in the same mode -----------------
    nmax = max(int(s) for s in a.sizes.split(","))
    report["gemm_tc"] = []
    for mode in ("tf32", "fp16"):
        dt = np.float32 if mode == "tf32" else np.float16
        # TF32 on: XDEV_CUDA_TF32=1 for cuBLAS, which OpenCL follows (XDEV_OPENCL_TF32 unset).
        saved = {k: os.environ.pop(k, None) for k in ("XDEV_CUDA_TF32", "XDEV_OPENCL_TF32")}
        if mode == "tf32":
            os.environ["XDEV_CUDA_TF32"] = "1"
        try:
            ha = rng.uniform(-1, 1, (nmax, nmax)).astype(dt)
            hb = rng.uniform(-1, 1, (nmax, nmax)).astype(dt)
            oa, ob = xdev.asarray(ha, backend=ocl.key), xdev.asarray(hb, backend=ocl.key)
            numerics = ocl.matmul_numerics(np.dtype(dt))["numerics"]
            sides = {"opencl xdev": (ocl, lambda: xdev.matmul(oa, ob))}
            if cuda:
                ca, cb = xdev.asarray(ha, backend=cuda.key), xdev.asarray(hb, backend=cuda.key)
                sides["cuda cublas"] = (cuda, lambda: xdev.matmul(ca, cb))
            res = interleave(sides, a.rounds, a.repeat)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
        for name, r in res.items():
            if "median_s" in r:
                r["tflops"] = 2 * nmax**3 / r["median_s"] / 1e12
            row = {"n": nmax, "mode": mode, "side": name, **r,
                   **({"numerics": numerics} if name.startswith("opencl") else {})}
            report["gemm_tc"].append(row)
            print(f"gemm {nmax:5d}^3 {mode:4s} {name:12s} " + (
                f"{r['median_s'] * 1e3:9.3f} ms  {r['tflops']:7.1f} TFLOP/s" if "median_s" in r else r["error"])
                + (f"  ({numerics})" if name.startswith("opencl") else ""))
        del oa, ob

    # -- VGG-16 convolutions ------------------------------------------------------------------
    layers = vgg16(a.batch, a.image)
    totals: dict[str, float] = {}
    per_layer = []
    auto_algos = []
    for layer in layers:
        hx = rng.uniform(-1, 1, (layer.N, layer.C, layer.H, layer.H)).astype(np.float32)
        hw = (rng.uniform(-1, 1, (layer.O, layer.C, 3, 3)) * 0.1).astype(np.float32)
        hbias = rng.uniform(-1, 1, (layer.O,)).astype(np.float32)
        ox, ow, obias = (xdev.asarray(h, backend=ocl.key) for h in (hx, hw, hbias))
        auto_algos.append(xdev.conv2d(ox, ow, obias, padding=1).algorithm)
        sides = {f"opencl {algo}": (ocl, lambda algo=algo: xdev.conv2d(ox, ow, obias, padding=1, algorithm=algo))
                 for algo in ("gemm", "direct")}
        if cuda:
            cx, cw, cbias = (xdev.asarray(h, backend=cuda.key) for h in (hx, hw, hbias))
            sides["cuda cudnn"] = (cuda, lambda: xdev.conv2d(cx, cw, cbias, padding=1, algorithm="cudnn"))
        res = interleave(sides, a.rounds // 2 + 1, max(1, a.repeat - 1))
        per_layer.append({"layer": layer.name, "shape": layer.shape, "auto": auto_algos[-1], **res})
        line = f"{layer.name:8s} auto={auto_algos[-1]:6s}"
        for name, r in res.items():
            if "median_s" in r:
                totals[name] = totals.get(name, 0.0) + r["median_s"]
                line += f"  {name} {r['median_s'] * 1e3:8.3f} ms"
            else:
                totals[name] = float("nan")
                line += f"  {name} {r['error']}"
        print(line)
    report["vgg16"] = {"batch": a.batch, "image": a.image, "layers": per_layer,
                       "total_ms": {k: v * 1e3 for k, v in totals.items()}, "auto": auto_algos}
    print("VGG-16 totals: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in totals.items()))

    # -- the targets -------------------------------------------------------------------------
    def target(name: str, value: float | None, goal: str, ok: bool | None, note: str = "") -> None:
        report["targets"].append({"check": name, "value": value, "goal": goal, "met": ok, "note": note})
        shown = "n/a" if value is None or value != value else f"{value:.3f}"
        verdict = {True: "MET", False: "NOT MET", None: "not measured"}[ok]
        print(f"  {name:45s} {shown:>8s}  (goal {goal})  {verdict} {note}")

    print("targets:")
    g = {(r["n"], r["side"]): r for r in report["gemm"]}
    ours, cub, clb = (g.get((nmax, k), {}).get("median_s") for k in ("opencl xdev", "cuda cublas", "opencl clblast"))
    r = cub / ours if ours and cub else None
    target(f"GEMM {nmax}^3 xdev OpenCL / cuBLAS", r, ">= 0.70", None if r is None else r >= 0.7)
    r2 = clb / ours if ours and clb else None
    target(f"GEMM {nmax}^3 xdev OpenCL / CLBlast (speed ratio)", r2, ">= 1 beats CLBlast", None if r2 is None else r2 >= 1.0)
    t = {(r["mode"], r["side"]): r.get("median_s") for r in report["gemm_tc"]}
    for mode in ("tf32", "fp16"):
        o, c = t.get((mode, "opencl xdev")), t.get((mode, "cuda cublas"))
        r5 = c / o if o and c else None
        target(f"GEMM {nmax}^3 {mode}: xdev OpenCL / cuBLAS {mode}", r5, ">= 0.50 (moonshot 0.80)",
               None if r5 is None else r5 >= 0.5)
    tg, td, tc = (totals.get(k) for k in ("opencl gemm", "opencl direct", "cuda cudnn"))
    r3 = tc / tg if tg and tc and tg == tg and tc == tc else None
    target(f"VGG-16 batch {a.batch}: cuDNN time / OpenCL gemm time", r3, ">= 0.60", None if r3 is None else r3 >= 0.6)
    never = all(x != "direct" for x in auto_algos)
    r4 = td / tg if tg and td and td == td else None
    target("VGG-16: OpenCL direct / gemm time", r4, "<= 2, unless auto never picks direct",
           None if r4 is None else (r4 <= 2.0 or never), "(auto picks direct on no VGG layer)" if never else "")
    report["seconds"] = time.time() - t_start
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
