"""Two measurements of the NumPy backend's cost, each a ratio within one process.

1. NumPy-backend conv2d over VGG-16's 13 convolution layers (batch 1, float32) against
   PyTorch's CPU conv2d (torch is a measuring stick here, not an xdev dependency:
   `pip install torch==2.13.0`). Each round times all layers with one library, pauses,
   then the other (alternating which goes first); the ratio is the median over rounds.
2. The cost of a tiny call: xdev.matmul on 16x16 xdev arrays (NumPy backend) against a
   bare np.matmul.

Run: python bench/foundation_checks.py [--rounds 3] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import time
import timeit

import numpy as np

import xdev
from xdev.contract.machine import blas_advice, blas_name
from xdev.bench.workloads import vgg16


def tiny_call(repeat: int) -> None:
    a_np = np.random.default_rng(1).standard_normal((16, 16), dtype=np.float32)
    b_np = np.random.default_rng(2).standard_normal((16, 16), dtype=np.float32)
    a, b = xdev.asarray(a_np, backend="numpy"), xdev.asarray(b_np, backend="numpy")
    n = 20000
    t_np = min(timeit.repeat(lambda: np.matmul(a_np, b_np), number=n, repeat=repeat)) / n
    t_x = min(timeit.repeat(lambda: xdev.matmul(a, b), number=n, repeat=repeat)) / n
    t_op = min(timeit.repeat(lambda: a @ b, number=n, repeat=repeat)) / n
    print(f"16x16 float32 matmul: np.matmul {t_np * 1e6:.2f} us, xdev.matmul {t_x * 1e6:.2f} us "
          f"({t_x / t_np:.2f}x), a @ b {t_op * 1e6:.2f} us ({t_op / t_np:.2f}x); target <= 4x")


def conv_vs_torch(rounds: int, repeat: int) -> None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        print("torch is not installed: pip install torch==2.13.0 (CPU build) to compare conv2d")
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    layers = vgg16(1)
    rng = np.random.default_rng(0)
    host = [(rng.standard_normal((L.C, L.H, L.H), dtype=np.float32)[None],
             rng.standard_normal((L.O, L.C, 3, 3), dtype=np.float32) * 0.05,
             rng.standard_normal(L.O, dtype=np.float32)) for L in layers]
    on_xdev = [tuple(xdev.asarray(a, backend="numpy") for a in h) for h in host]
    on_torch = [tuple(torch.from_numpy(a) for a in h) for h in host]

    def run_xdev(i):
        return xdev.conv2d(*on_xdev[i], padding=1)

    def run_torch(i):
        with torch.no_grad():
            return F.conv2d(*on_torch[i], padding=1)

    for i in range(len(layers)):  # the two must agree before their speed means anything
        ref, got = run_torch(i).numpy(), run_xdev(i).numpy()
        assert np.allclose(got, ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max()), layers[i].name

    def per_layer(run) -> list[float]:
        out = []
        for i in range(len(layers)):
            run(i)  # warm-up
            ts = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                run(i)
                ts.append(time.perf_counter() - t0)
            out.append(float(np.median(ts)))
        return out

    per_round = []
    for r in range(rounds):
        order = [("xdev", run_xdev), ("torch", run_torch)]
        if r % 2:
            order.reverse()
        got = {}
        for name, run in order:
            time.sleep(0.5)  # let the other library's worker threads go idle
            got[name] = per_layer(run)
        per_round.append(got)
        print(f"round {r + 1}: xdev numpy {sum(got['xdev']) * 1e3:.1f} ms, torch {sum(got['torch']) * 1e3:.1f} ms, "
              f"ratio {sum(got['torch']) / sum(got['xdev']):.2f}")
    med = {k: np.median([g[k] for g in per_round], axis=0) for k in ("xdev", "torch")}
    flops = np.array([L.flops for L in layers])
    print(f"{'layer':8s} {'C>O @H':>13s} {'xdev ms':>9s} {'torch ms':>9s} {'xdev/torch':>11s}")
    for L, a, b in zip(layers, med["xdev"], med["torch"]):
        print(f"{L.name:8s} {f'{L.C}>{L.O} @{L.H}':>13s} {a * 1e3:9.2f} {b * 1e3:9.2f} {b / a:11.2f}")
    ratios = [sum(g["torch"]) / sum(g["xdev"]) for g in per_round]
    tx, tt = med["xdev"].sum(), med["torch"].sum()
    print(f"VGG-16 conv layers, batch 1, float32, {blas_name()}: xdev numpy {flops.sum() / tx / 1e9:.0f} GFLOP/s, "
          f"torch {torch.__version__} {flops.sum() / tt / 1e9:.0f} GFLOP/s; xdev/torch throughput "
          f"{np.median(ratios):.2f} (median of rounds {', '.join(f'{x:.2f}' for x in ratios)}; target >= 0.70)")
    advice = blas_advice()
    if advice:
        print("note:", advice)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    tiny_call(a.repeat)
    conv_vs_torch(a.rounds, a.repeat)


if __name__ == "__main__":
    main()
