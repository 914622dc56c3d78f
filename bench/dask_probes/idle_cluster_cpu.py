"""CPU time an idle LocalCluster of 2 workers takes, per process, in CPU-seconds per second.

    python bench/dask_probes/idle_cluster_cpu.py                       # Dask's defaults
    python bench/dask_probes/idle_cluster_cpu.py distributed.worker.profile.enabled=false

Arguments are dask config settings (key=value). Processes: this one (client, scheduler,
nannies), then the worker processes. Quoted in docs/dask.md.
"""
import logging
import sys
import time

import dask
import psutil
from distributed import Client, LocalCluster

if __name__ == "__main__":
    cfg = {}
    for arg in sys.argv[1:]:
        k, v = arg.split("=", 1)
        cfg[k] = {"true": True, "false": False}.get(v, v)
    dask.config.set(cfg)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as c, Client(c) as client:
        client.amm.stop()
        time.sleep(2)
        me = psutil.Process()
        procs = [me] + [p for p in me.children(recursive=True) if "resource_tracker" not in " ".join(p.cmdline())]
        before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
        time.sleep(8)
        use = [(sum(p.cpu_times()[:2]) - before[p.pid]) / 8 for p in procs]
        print(f"{sys.argv[1:] or 'defaults'}: client/scheduler/nannies {use[0]:.3f}, workers "
              f"{', '.join(f'{u:.3f}' for u in use[1:])}, total {sum(use):.3f} CPU-s/s")
