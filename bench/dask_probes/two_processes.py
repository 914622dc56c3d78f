"""The best 2 CPU workers can do here, without Dask: two plain processes with one BLAS thread
each compute 8 output blocks of 4096^2 float32 in 1024^2 chunks each (1024x4096 @ 4096x1024,
the K panels ready), against one process with every core on the whole 4096^2 product. The
sides alternate, 11 rounds (or argv[1]). Quoted in docs/dask.md.

    python bench/dask_probes/two_processes.py
"""
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def child() -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(-1, 1, (1024, 4096)).astype(np.float32)
    b = rng.uniform(-1, 1, (4096, 1024)).astype(np.float32)
    a @ b
    print("ready", flush=True)
    for _ in sys.stdin:
        for _ in range(8):
            a @ b
        print("done", flush=True)


if __name__ == "__main__":
    if sys.argv[1:] == ["child"]:
        child()
        sys.exit()
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 11
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    kids = [subprocess.Popen([sys.executable, __file__, "child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=env) for _ in range(2)]
    for k in kids:
        assert k.stdout.readline().strip() == "ready"
    A = np.random.default_rng(0).uniform(-1, 1, (4096, 4096)).astype(np.float32)
    B = A.T.copy()
    A @ B
    one, two = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        A @ B
        one.append(time.perf_counter() - t0)
        time.sleep(0.3)
        t0 = time.perf_counter()
        for k in kids:
            k.stdin.write("go\n")
            k.stdin.flush()
        for k in kids:
            assert k.stdout.readline().strip() == "done"
        two.append(time.perf_counter() - t0)
        time.sleep(0.3)
    for k in kids:
        k.stdin.close()
        k.wait()
    m1, m2 = statistics.median(one), statistics.median(two)
    print(f"one process {m1:.3f} s, two plain processes {m2:.3f} s: efficiency {m1 / m2:.3f}")
