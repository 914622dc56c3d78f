"""OpenCL on the CPU against NumPy's BLAS and torch, at the instruction set each side runs.

    python bench/cpu_isa_check.py                       # every OpenCL CPU device here
    python bench/cpu_isa_check.py --device opencl:1:0 --size 1024 --rounds 5 --no-conv

For each OpenCL CPU device: the ISA its compiler targets (xdev's isa.py), where its
parameters came from, then float32 GEMM n^3 by NumPy (OpenBLAS, its core type named) and
by xdev with the derived micro-tile and the next candidates the tuner would screen; and
VGG-16's 13 convolutions at batch 1 by torch (oneDNN; when torch is installed) and by
xdev's implicit GEMM with the derived conv tile and its neighbours. Every round runs each
side once, in alternating order, with a pause between sides (the BLAS's and PoCL's threads
spin after a call); the table shows medians, the interquartile range and the ratio to the
reference in the same rounds, and the calibrated FMA peak of the OpenCL device.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import xdev
from xdev._registry import get_device
from xdev.bench.workloads import vgg16
from xdev.contract import conv_params
from xdev.contract.machine import cpu_info, openblas_core


def interleaved(sides: dict[str, object], rounds: int, pause: float) -> dict[str, list[float]]:
    """sides: name -> callable returning seconds of one call. Alternating order each round."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            out[n].append(sides[n]())  # type: ignore[operator]
            time.sleep(pause)
    return out


def stats(flops: float, ts: list[float]) -> dict[str, float]:
    q1, med, q3 = np.percentile(ts, [25, 50, 75])
    return {"median_s": float(med), "gflops": flops / med / 1e9, "gflops_q1": flops / q3 / 1e9,
            "gflops_q3": flops / q1 / 1e9}


def host_timer(fn):
    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0
    return run


def check_device(dev, a, size: int, rounds: int, pause: float, conv: bool, extra: int) -> dict:
    from xdev.backends.opencl import autotune, isa, params

    info = dev.info()
    t = dev.target
    regs, lanes = (t.vector_registers, isa.LANES.get(t.isa)) if t else (isa.DEFAULT_REGISTERS, None)
    vw = dev.params["gemm"]["VW"]
    rep = {"device": dev.key, "name": dev.name, "isa": info["isa"], "target_cpu": info["target_cpu"],
           "isa_source": info["isa_source"], "vector_registers": info["vector_registers"],
           "params_source": info["params_source"], "peak_gflops": dev.peak_gflops(np.float32), "rows": []}
    print(f"\n{dev.key} {dev.name}: {info['isa']} ({info['target_cpu'] or 'target CPU unknown'}, from the "
          f"{info['isa_source']}), {regs} vector registers, width {vw}; calibrated peak "
          f"{rep['peak_gflops']:.0f} GFLOP/s\n  parameters: {info['params_source']}")
    saved = {k: dict(dev.params[k]) for k in ("gemm", "conv")}
    cands = autotune.cpu_candidates(regs, lanes, vw)

    def tiles(key: str) -> list[tuple[int, int]]:
        d = (saved[key]["MR"], saved[key]["NV"])
        return [d] + [c for c in cands if c != d][:extra]

    def with_tile(key: str, tile: tuple[int, int], fn):
        def run() -> float:
            dev.params[key] = {**saved[key], "MR": tile[0], "NV": tile[1]}
            try:
                return float(np.median(dev.elapsed(fn, 1)))
            finally:
                dev.params[key] = dict(saved[key])
        return run

    # -- GEMM ------------------------------------------------------------------------------
    A = np.asarray(a[:size, :size])
    B = np.asarray(a[size:2 * size, :size])
    xa, xb = dev.upload(np.ascontiguousarray(A)), dev.upload(np.ascontiguousarray(B))
    sides = {"numpy": host_timer(lambda: A @ B)}
    for tile in tiles("gemm"):
        sides[f"gemm {tile[0]}x{tile[1]}"] = with_tile("gemm", tile, lambda: dev.matmul(xa, xb))
    for fn in sides.values():
        fn()  # builds and warms every side
    ts = interleaved(sides, rounds, pause)
    flops = 2.0 * size**3
    ref = float(np.median(ts["numpy"]))
    for name, t_ in ts.items():
        row = {"op": f"sgemm {size}^3", "side": name, **stats(flops, t_), "vs_ref": ref / float(np.median(t_)),
               "default": name == f"gemm {saved['gemm']['MR']}x{saved['gemm']['NV']}"}
        rep["rows"].append(row)
    # -- VGG-16 convolutions at batch 1 ----------------------------------------------------
    if conv:
        rng = np.random.default_rng(1)
        layers = vgg16(1)
        ins = []
        for L in layers:
            xs, ws = (1, L.C, L.H, L.H), (L.O, L.C, 3, 3)
            x = rng.standard_normal(xs, dtype=np.float32)
            w = rng.standard_normal(ws, dtype=np.float32)
            ins.append((x, w, dev.upload(x), dev.upload(w), conv_params(xs, ws, None, 1, 1, 1, 1)))
        sides = {}
        try:
            import torch

            tin = [(torch.from_numpy(x), torch.from_numpy(w)) for x, w, *_ in ins]

            def torch_run() -> None:
                with torch.no_grad():
                    for x, w in tin:
                        torch.nn.functional.conv2d(x, w, padding=1)

            sides["torch"] = host_timer(torch_run)
            rep["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
        except ImportError:
            rep["torch"] = "not installed"
        run = lambda: [dev.conv2d(cx, cw, None, p, "gemm") for _, _, cx, cw, p in ins]  # noqa: E731
        for tile in tiles("conv"):
            sides[f"conv {tile[0]}x{tile[1]}"] = with_tile("conv", tile, run)
        for fn in sides.values():
            fn()
        ts = interleaved(sides, max(3, rounds // 2 + 1), pause)
        flops = float(sum(L.flops for L in layers))
        ref = float(np.median(ts["torch"])) if "torch" in ts else None
        for name, t_ in ts.items():
            rep["rows"].append({"op": "VGG-16 conv b1", "side": name, **stats(flops, t_),
                                "vs_ref": ref / float(np.median(t_)) if ref else None,
                                "default": name == f"conv {saved['conv']['MR']}x{saved['conv']['NV']}"})
    return rep


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", help="an OpenCL selector (default: every OpenCL CPU device)")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--extra", type=int, default=3, help="candidate tiles beside the default")
    p.add_argument("--pause", type=float, default=0.3, help="seconds between sides")
    p.add_argument("--no-conv", action="store_true")
    p.add_argument("--json", metavar="FILE")
    a = p.parse_args(argv)
    st = xdev.available_backends()["opencl"]
    if not st.available:
        print(f"OpenCL unavailable: {st.reason}")
        return 1
    keys = [a.device] if a.device else list(st.devices)
    devs = [d for d in (get_device(k) for k in keys) if d.is_cpu]
    if not devs:
        print(f"no OpenCL CPU device among {keys}")
        return 1
    cpu = cpu_info()
    core = openblas_core()
    print(f"CPU: {cpu['model']}, {cpu['physical_cores']} cores, {cpu['simd']}; NumPy {np.__version__} "
          f"OpenBLAS core {core or '?'}")
    big = np.random.default_rng(0).standard_normal((2 * a.size, a.size), dtype=np.float32)
    report = {"cpu": cpu, "openblas_core": core, "devices": []}
    for dev in devs:
        report["devices"].append(check_device(dev, big, a.size, a.rounds, a.pause, not a.no_conv, a.extra))
    print("\n| device | ISA (target) | workload | side | GFLOP/s (IQR) | % peak | vs reference |")
    print("|---|---|---|---|---|---|---|")
    for r in report["devices"]:
        for row in r["rows"]:
            ref = "numpy" if row["op"].startswith("sgemm") else "torch"
            vs = f"{row['vs_ref']:.2f}x {ref}" if row["vs_ref"] is not None else "-"
            mark = " (default)" if row["default"] else ""
            print(f"| {r['device']} | {r['isa']} ({r['target_cpu']}) | {row['op']} | {row['side']}{mark} | "
                  f"{row['gflops']:.1f} ({row['gflops_q1']:.1f}-{row['gflops_q3']:.1f}) | "
                  f"{100 * row['gflops'] / r['peak_gflops']:.0f} | {vs} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
