"""xdev.dask.matmul (4096^2 float32, 1024^2 chunks) on a LocalCluster of 2 worker *threads*
against one process alone (timed before and after), 9 rounds each. With ``one``, OpenBLAS is
limited to 1 thread (threadpoolctl, process-wide) during the Dask runs. Quoted in docs/dask.md.

    python bench/dask_probes/threaded_cluster.py          # OpenBLAS as it is (2 threads per call)
    python bench/dask_probes/threaded_cluster.py one
"""
import logging
import statistics
import sys
import time
import warnings

import dask.array as da
import distributed
import numpy as np
from distributed import Client, LocalCluster

import xdev
import xdev.dask as xd
from xdev.bench.dask_bench import _DaskRun


def timed(fn, n=9):
    t = []
    for _ in range(n):
        time.sleep(0.3)
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
        getattr(fn, "settle", lambda: None)()
    return t


if __name__ == "__main__":
    one_blas = sys.argv[1:] == ["one"]
    rng = np.random.default_rng(0)
    A, B = (rng.random((4096, 4096), dtype=np.float32) for _ in range(2))
    xa, xb = xdev.asarray(A), xdev.asarray(B)
    one = lambda: xdev.matmul(xa, xb)  # noqa: E731
    one()
    alone = timed(one)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c, Client(c) as client:
        client.amm.stop()
        warnings.simplefilter("ignore")
        Ad, Bd = client.persist(da.from_array(A, chunks=1024)), client.persist(da.from_array(B, chunks=1024))
        distributed.wait([Ad, Bd])
        run = _DaskRun(client, distributed, lambda: xd.matmul(Ad, Bd, backend="numpy"), [Ad, Bd])
        limit = None
        if one_blas:
            from threadpoolctl import threadpool_limits
            limit = threadpool_limits(1)
        run()
        run.settle()
        t_dask = timed(run)
        if limit is not None:
            limit.restore_original_limits()
    alone += timed(one)
    a, d = statistics.median(alone), statistics.median(t_dask)
    print(f"OpenBLAS {'1 thread' if one_blas else 'as is'}: one process alone {a:.3f} s, Dask on 2 threads "
          f"{d:.3f} s, efficiency {a / d:.3f}")
