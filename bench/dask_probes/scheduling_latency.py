"""Where a Dask run of xdev.dask.matmul (4096^2 float32, 1024^2 chunks, 2 workers of
xdev.dask.local_cluster, every block already in place) spends its wall time: building the
graph, from persist to the first task starting, from the last task's end to wait returning,
and the busiest worker's compute. 11 runs. Quoted in docs/dask.md.

    python bench/dask_probes/scheduling_latency.py
"""
import logging
import time
import warnings

import dask.array as da
import distributed
import numpy as np
from dask.core import flatten
from distributed import Client

import xdev.dask as xd
from xdev.bench.dask_bench import _DaskRun

if __name__ == "__main__":
    with xd.local_cluster(2, dashboard_address=":0", silence_logs=logging.ERROR) as c, Client(c) as client:
        client.amm.stop()  # the copies a run fetches stay: every later run finds its blocks in place
        rng = np.random.default_rng(0)
        A, B = (rng.random((4096, 4096), dtype=np.float32) for _ in range(2))
        warnings.simplefilter("ignore")
        Ad, Bd = client.persist(da.from_array(A, chunks=1024)), client.persist(da.from_array(B, chunks=1024))
        distributed.wait([Ad, Bd])
        run = _DaskRun(client, distributed, lambda: xd.matmul(Ad, Bd, backend="numpy"), [Ad, Bd], drop_copies=False)
        run()
        run.settle()
        for _ in range(11):
            time.sleep(0.3)
            with distributed.get_task_stream(client) as ts:
                t0, p0 = time.time(), time.perf_counter()
                graph = xd.matmul(Ad, Bd, backend="numpy")
                t_graph = time.perf_counter() - p0
                out = graph.persist()
                distributed.wait(out)
                wall, t1 = time.perf_counter() - p0, time.time()
                run.keys = list(flatten(out.__dask_keys__()))  # settle waits until the scheduler forgets them
                del out, graph
            run.settle()
            spans = [s for t in ts.data for s in t["startstops"] if s["action"] == "compute"]
            busy: dict[str, float] = {}
            for t in ts.data:
                for s in t["startstops"]:
                    if s["action"] == "compute":
                        busy[t["worker"]] = busy.get(t["worker"], 0.0) + s["stop"] - s["start"]
            first, last = min(s["start"] for s in spans), max(s["stop"] for s in spans)
            print(f"wall {wall:.3f} s: graph {t_graph * 1e3:4.1f} ms, persist to first task {(first - t0) * 1e3:5.1f} ms, "
                  f"last task to wait {(t1 - last) * 1e3:4.1f} ms, busiest worker computing {max(busy.values()):.3f} s")
