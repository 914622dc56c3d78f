"""OpenCL timing method check: the same calls timed by profiling events (OpenCLDevice.elapsed,
what the benchmark uses) and by the host clock around a queue.finish() (the base
Device.elapsed, the method before), interleaved ABAB in one process.

    python bench/opencl_timing_check.py [--device opencl] [--rounds 6]

On a quiet machine the two agree within a few percent for kernels of milliseconds; on a
loaded one the host clock also counts the waiting thread's wake-up after the last kernel.
"""
from __future__ import annotations

import argparse

import numpy as np

import xdev
from xdev._registry import get_device
from xdev.contract import Device


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="opencl")
    p.add_argument("--rounds", type=int, default=6)
    a = p.parse_args()
    dev = get_device(a.device)
    rng = np.random.default_rng(0)

    def arr(*shape: int) -> xdev.Array:
        return xdev.asarray(rng.uniform(-1, 1, shape).astype(np.float32), backend=dev.key)

    x, s = arr(512, 512), arr(16, 16)
    c, w = arr(1, 64, 56, 56), arr(64, 64, 3, 3)
    cases = [("matmul 512^3", lambda: xdev.matmul(x, x)),
             ("conv 64>64 @56", lambda: xdev.conv2d(c, w, padding=1)),
             ("matmul 16^3", lambda: xdev.matmul(s, s))]
    print(f"{dev.key}: {dev.name}")
    for name, fn in cases:
        fn()
        dev.synchronize()
        events: list[float] = []
        host: list[float] = []
        for _ in range(a.rounds):  # ABAB
            events += dev.elapsed(fn, 5)
            host += Device.elapsed(dev, fn, 5)
        e, h = float(np.median(events)), float(np.median(host))
        print(f"{name:15s} events {e * 1e3:8.3f} ms   host clock {h * 1e3:8.3f} ms   host/events {h / e:.2f}")


if __name__ == "__main__":
    main()
