"""A 1024^3 float32 product with 1 OpenBLAS thread, median of 40: run it with and without
Dask's worker setting to see what fresh memory per product costs. Quoted in docs/dask.md.

    OPENBLAS_NUM_THREADS=1 python bench/dask_probes/fresh_memory.py
    OPENBLAS_NUM_THREADS=1 MALLOC_TRIM_THRESHOLD_=65536 python bench/dask_probes/fresh_memory.py
"""
import os
import statistics
import time

import numpy as np

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    a, b = (rng.random((1024, 1024), dtype=np.float32) for _ in range(2))
    a @ b
    t = []
    for _ in range(40):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    print(f"MALLOC_TRIM_THRESHOLD_={os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')}: "
          f"{statistics.median(t) * 1e3:.1f} ms per product")
