"""xdev.dask.matmul (4096^2 float32, 1024^2 chunks) on a fresh xdev.dask.local_cluster(2) with
COMPUTE_CONFIG plus the settings given (dask config key=value; none = unset), 11 rounds of
two runs: one that moves the blocks it needs, one that finds them in place. Quoted in
docs/dask.md, which ran it in A/B pairs:

    python bench/dask_probes/malloc_trim_ab.py distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_=65536
    python bench/dask_probes/malloc_trim_ab.py        # COMPUTE_CONFIG: MALLOC_TRIM_THRESHOLD_ unset
"""
import logging
import os
import statistics
import sys
import time
import warnings

import dask.array as da
import distributed
import numpy as np
from distributed import Client

import xdev.dask as xd
from xdev.bench.dask_bench import _DaskRun


def value(v: str):
    return {"false": False, "true": True, "none": None}.get(v.lower(), v)


if __name__ == "__main__":
    extra = {k: value(v) for k, v in (a.split("=", 1) for a in sys.argv[1:])}
    with xd.local_cluster(2, dask_config={**xd.COMPUTE_CONFIG, **extra}, dashboard_address=":0",
                          silence_logs=logging.ERROR) as c, Client(c) as client:
        client.amm.stop()  # copies are dropped by _DaskRun.settle, not on a timer
        trim = set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())
        rng = np.random.default_rng(0)
        A, B = (rng.random((4096, 4096), dtype=np.float32) for _ in range(2))
        warnings.simplefilter("ignore")
        Ad, Bd = client.persist(da.from_array(A, chunks=1024)), client.persist(da.from_array(B, chunks=1024))
        distributed.wait([Ad, Bd])
        make = lambda: xd.matmul(Ad, Bd, backend="numpy")  # noqa: E731
        # Settled with drop_copies, a run leaves the next one to move its blocks; without, to find them.
        leaves_moved, leaves_in_place = _DaskRun(client, distributed, make, [Ad, Bd]), \
            _DaskRun(client, distributed, make, [Ad, Bd], drop_copies=False)
        for r in (leaves_moved, leaves_in_place):
            r()
            r.settle()
        moved, in_place = [], []
        for _ in range(11):
            for r, out in ((leaves_in_place, moved), (leaves_moved, in_place)):
                time.sleep(0.3)
                t0 = time.perf_counter()
                r()
                out.append(time.perf_counter() - t0)
                r.settle()
        m, p = statistics.median(moved), statistics.median(in_place)
        print(f"{extra or 'COMPUTE_CONFIG'} (workers' MALLOC_TRIM_THRESHOLD_: {', '.join(map(str, trim))}): "
              f"blocks moved {m:.3f} s, in place {p:.3f} s")
