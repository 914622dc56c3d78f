"""One xdev process's 4096^2 float32 matmul alone, then beside an idle 2-worker LocalCluster,
twice (medians of 12 calls each, 0.3 s apart). Quoted in docs/dask.md.

    python bench/dask_probes/one_process_beside_cluster.py
"""
import logging
import statistics
import time

import numpy as np
from distributed import Client, LocalCluster

import xdev


def median_of(xa, n=12):
    t = []
    for _ in range(n):
        time.sleep(0.3)
        t0 = time.perf_counter()
        xdev.matmul(xa, xa)
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


if __name__ == "__main__":
    xa = xdev.asarray(np.random.default_rng(0).random((4096, 4096), dtype=np.float32))
    xdev.matmul(xa, xa)
    for _ in range(2):
        print(f"alone        {median_of(xa):.3f} s")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR, env={"OPENBLAS_NUM_THREADS": "1"}) as c, Client(c) as client:
            client.amm.stop()
            time.sleep(2)
            print(f"beside idle  {median_of(xa):.3f} s")
