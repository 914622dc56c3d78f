"""Integer matmul and conv2d speed of each backend given (default numpy,opencl): int32, the
backends alternating, medians of 5 (docs/opencl.md, "dtypes per device").

    python bench/integer_speed.py [numpy,opencl[,cuda]]
"""
from __future__ import annotations

import sys
import time

import numpy as np

import xdev


def timed(fn, backend: str) -> float:
    xdev.synchronize(backend)
    t0 = time.perf_counter()
    fn()
    xdev.synchronize(backend)
    return time.perf_counter() - t0


def main(backends: list[str]) -> None:
    rng = np.random.default_rng(0)
    n = 512
    a, b = (rng.integers(-100, 100, (n, n)).astype(np.int32) for _ in range(2))
    x = rng.integers(-9, 9, (1, 64, 56, 56)).astype(np.int32)
    w = rng.integers(-9, 9, (64, 64, 3, 3)).astype(np.int32)
    work = {"matmul 512^3": (2 * n**3, lambda be, d: xdev.matmul(d["a"], d["b"])),
            "conv 64->64 3x3 56x56": (2 * 64 * 64 * 9 * 56 * 56, lambda be, d: xdev.conv2d(d["x"], d["w"], padding=1))}
    data = {be: {k: xdev.asarray(v, backend=be) for k, v in dict(a=a, b=b, x=x, w=w).items()} for be in backends}
    for name, (ops, fn) in work.items():
        times: dict[str, list[float]] = {be: [] for be in backends}
        for be in backends:
            timed(lambda: fn(be, data[be]), be)  # warm-up: kernels built
        for _ in range(5):
            for be in backends:
                times[be].append(timed(lambda: fn(be, data[be]), be))
        for be in backends:
            med = float(np.median(times[be]))
            iqr = float(np.subtract(*np.percentile(times[be], [75, 25])))
            print(f"int32 {name:24s} {be:8s} {med * 1e3:8.1f} ms ± {iqr * 1e3:.1f}  {ops / med / 1e9:6.2f} GOP/s")


if __name__ == "__main__":
    main(sys.argv[1].split(",") if len(sys.argv) > 1 else ["numpy", "opencl"])
