"""``python -m xdev.bench --dask N``: xdev.dask on N local workers against one xdev process.

Workloads: a blocked n x n matmul in c x c chunks (default 4096 in 1024: 16 output blocks,
each over 4 K blocks) and the VGG-16 convolutions on a batch chunked evenly across the
workers (one chunk of images per worker). Inputs and weights are persisted on the workers
first, so each timed run is what a Dask user pays per call: graph construction, scheduling,
moving blocks between workers, the block products (``persist`` + ``wait``; the result stays
on the workers). One process: the same op through xdev with every core (or its one GPU),
timed alone (before the cluster starts and after it closes: the headline, since an idle
cluster takes CPU from it) and beside the idle cluster, alternating with Dask round by
round (the comparison least moved by drift). Each side reports its median. Before each Dask run the scheduler has
forgotten the previous result (the graph is the same, so would its keys be, and a result
still held would be found, not computed) and each input block is back to one copy, so every
run moves the blocks it needs. The matmul adds a third side: Dask finding the copies the run
before it fetched, which separates the cost of moving blocks from the rest.

The CPU cluster is ``xdev.dask.local_cluster``: one worker process of one thread per share of
the cores, Dask's housekeeping quieted (``xdev.dask.COMPUTE_CONFIG``, also set for dask-cuda's
cluster); ``--dask-defaults`` keeps Dask's own configuration, to measure what that costs.

Scaling efficiency = speedup / ideal speedup, with speedup = t(one process alone) / t(Dask). The
ideal speedup is N for N GPU workers (one GPU each, dask-cuda) and 1 for CPU workers: they
share the cores that the one process already uses in full. Dask's overhead = 1/efficiency - 1.
The efficiency carries its spread (from the two sides' interquartile ranges); the target is
TARGET_EFFICIENCY, met only when the efficiency is above it by more than its spread.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
import warnings
from contextlib import ExitStack
from typing import Any, Callable

import numpy as np

import xdev
from xdev._registry import get_device
from xdev.contract import env

from . import workloads as wl
from .meta import SCHEMA, environment, run_block, threads
from .noise import ratio, sample_load, summarize_load

PAUSE_S = 0.3  # let one side's BLAS / PoCL threads go idle before the other side starts
# ... scaled down after short calls (at most this many times the last call): OpenBLAS's threads
# spin about 0.1 s after a call that woke them, and a call of a few ms barely wakes them.
PAUSE_PER_CALL = 10.0
# Dask's overhead stays small: at least 0.8 of the ideal speedup (CPU workers: of one process).
TARGET_EFFICIENCY = 0.8
FORGET_TIMEOUT_S = 60.0


def _needs() -> tuple[Any, Any, Any]:
    try:
        import dask.array as da
        import distributed

        import xdev.dask as xd
    except ImportError as e:
        raise SystemExit(f'python -m xdev.bench --dask needs dask and distributed ({e}): pip install "xdev[dask]"') from None
    return da, distributed, xd


def _alternate(sides: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Warm every side up, then run them in turn, ``repeats`` rounds; seconds per call of each.
    A side with a ``settle`` method has it called after each call, untimed."""
    def settle(fn: Callable[[], Any]) -> None:
        getattr(fn, "settle", lambda: None)()

    for fn in sides:
        fn()
        settle(fn)
    times: list[list[float]] = [[] for _ in sides]
    last = PAUSE_S
    for _ in range(repeats):
        for fn, out in zip(sides, times):
            time.sleep(min(PAUSE_S, PAUSE_PER_CALL * last))
            t0 = time.perf_counter()
            fn()
            last = time.perf_counter() - t0
            out.append(last)
            settle(fn)
    return times


def _held(keys: list[Any], dask_scheduler: Any = None) -> int:
    """Runs on the scheduler: how many of ``keys`` it still knows."""
    return sum(k in dask_scheduler.tasks for k in keys)


def _replicas(keys: list[Any], dask_scheduler: Any = None) -> int:
    """Runs on the scheduler: copies of ``keys`` beyond one each."""
    return sum(max(0, len(dask_scheduler.tasks[k].who_has) - 1) for k in keys if k in dask_scheduler.tasks)


class _DaskRun:
    """One call as a Dask user pays it: build the graph, persist, wait (the result stays on the
    workers). ``settle`` then, untimed, waits until the scheduler has forgotten that result
    and, with ``drop_copies``, until the workers hold one copy of each input block again.

    Workers keep the copies of the blocks they fetched (the benchmark stops Dask's active
    memory manager, which would drop them every few seconds, at random points of the series),
    so a run settled with ``drop_copies`` leaves the next one to move every block it needs,
    and one settled without leaves the next one to find them in place."""

    def __init__(self, client: Any, distributed: Any, make: Callable[[], Any], inputs: list[Any],
                 drop_copies: bool = True) -> None:
        from dask.core import flatten

        self.client, self.distributed, self.make = client, distributed, make
        self.inputs = [k for x in inputs for k in flatten(x.__dask_keys__())]
        self.drop_copies = drop_copies
        self.keys: list[Any] = []

    def __call__(self) -> None:
        from dask.core import flatten

        out = self.make().persist()
        self.distributed.wait(out)
        self.keys = list(flatten(out.__dask_keys__()))
        del out  # the client releases the keys; the scheduler forgets them a moment later

    def settle(self) -> None:
        deadline = time.monotonic() + FORGET_TIMEOUT_S
        while self.keys and self.client.run_on_scheduler(_held, self.keys):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Dask scheduler still holds a result {FORGET_TIMEOUT_S:.0f} s after its "
                                   "release; a rerun would find it instead of computing it, so the timing stops here")
            time.sleep(0.01)
        self.keys = []
        while self.drop_copies and self.client.run_on_scheduler(_replicas, self.inputs):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Dask workers still hold extra copies of the inputs {FORGET_TIMEOUT_S:.0f} s "
                                   "after asking to drop them; runs would not start alike, so the timing stops here")
            self.client.amm.run_once()  # ReduceReplicas: drop copies no task waits for
            time.sleep(0.02)


def _iqr(t: list[float]) -> float:
    if len(t) < 2:
        return 0.0
    q = statistics.quantiles(t, n=4, method="inclusive")
    return q[2] - q[0]


def _verdict(eff: float, spread: float) -> str:
    if abs(eff - TARGET_EFFICIENCY) <= spread:
        return "within noise"
    return "met" if eff > TARGET_EFFICIENCY else "not met"


def _row(op: str, shape: str, t_alone: list[float], t_beside: list[float], t_dask: list[float], flops: int,
         ideal: float, tasks: int, **extra: Any) -> dict[str, Any]:
    """Headline: Dask against one process timed alone (no cluster on the machine); also against
    the same process timed beside the idle cluster, alternating with Dask round by round."""
    one, dsk = statistics.median(t_alone), statistics.median(t_dask)
    speedup, spread, _ = ratio(one, _iqr(t_alone), dsk, _iqr(t_dask))
    eff, eff_spread = speedup / ideal, spread / ideal
    beside = statistics.median(t_beside)
    b_speedup, b_spread, _ = ratio(beside, _iqr(t_beside), dsk, _iqr(t_dask))
    return {"op": op, "shape": shape, "one_process_s": one, "dask_s": dsk,
            "one_process_iqr_s": _iqr(t_alone), "dask_iqr_s": _iqr(t_dask),
            "one_process_runs_s": t_alone, "dask_runs_s": t_dask,
            "one_process_beside_s": beside, "one_process_beside_runs_s": t_beside,
            "pair_ratios": [x / y for x, y in zip(t_beside, t_dask)],
            "one_process_gflops": flops / one / 1e9, "dask_gflops": flops / dsk / 1e9,
            "speedup": speedup, "speedup_spread": spread, "ideal_speedup": ideal, "efficiency": eff,
            "efficiency_spread": eff_spread, "efficiency_beside": b_speedup / ideal,
            "efficiency_beside_spread": b_spread / ideal, "target_efficiency": TARGET_EFFICIENCY,
            "target": _verdict(eff, eff_spread), "dask_overhead": 1 / eff - 1, "tasks": tasks, **extra}


def _profile(distributed: Any, client: Any, fn: _DaskRun, workers: int) -> dict[str, Any]:
    """One more (untimed for the medians) Dask run under Dask's task stream: how much of the
    wall time the workers spent computing, and in transfers between them."""
    with distributed.get_task_stream(client) as ts:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    fn.settle()
    spent = {"compute": 0.0, "transfer": 0.0}
    for task in ts.data:
        for s in task.get("startstops", ()):
            if s["action"] in spent:
                spent[s["action"]] += s["stop"] - s["start"]
    return {"profiled_wall_s": wall, "worker_compute_s": spent["compute"], "worker_transfer_s": spent["transfer"],
            "worker_busy": spent["compute"] / (wall * workers) if wall > 0 else None}


def _cluster(stack: ExitStack, distributed: Any, xd: Any, n: int, dev: Any,
             dask_config: dict[str, Any]) -> tuple[Any, str | None, float]:
    """(client, backend= for the workers, ideal speedup)."""
    import dask

    # ":0": the scheduler's HTTP server (dashboard, health) on a free port; None still means 8787.
    quiet = dict(dashboard_address=":0", silence_logs=logging.ERROR)
    if dev.backend == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError:
            raise SystemExit("--dask on the cuda backend runs one worker per GPU through dask-cuda: "
                             "pip install dask-cuda (see docs/dask.md)") from None
        # Each worker sees its own GPU as device 0 (CUDA_VISIBLE_DEVICES); XDEV_BACKEND=cuda in
        # the workers' environment is resolved there (backend=None below).
        with dask.config.set(dask_config):
            cluster = stack.enter_context(LocalCUDACluster(n_workers=n, env={env.BACKEND: "cuda"}, **quiet))
        return stack.enter_context(distributed.Client(cluster)), None, float(n)
    # CPU workers: one process each, their BLAS threads splitting the cores among them.
    cluster = stack.enter_context(xd.local_cluster(n, dask_config=dask_config, **quiet))
    return stack.enter_context(distributed.Client(cluster)), dev.key, 1.0


def _dask_settings(keys: Any) -> dict[str, Any]:
    """Runs on each worker: the values of the dask config ``keys`` in effect there."""
    import dask

    return {k: dask.config.get(k, None) for k in keys}


def _load_sample() -> dict[str, Any]:
    """sample_load, with the CPU time of the worker processes counted as ours (the load
    summary would otherwise report them as other processes)."""
    s = sample_load()
    try:
        import psutil  # a dependency of distributed

        s["self_cpu_s"] += sum(sum(c.cpu_times()[:2]) for c in psutil.Process().children(recursive=True))
    except Exception:  # noqa: BLE001 - a child that exited between listing and reading
        pass
    return s


def _cluster_config(client: Any, keys: Any) -> dict[str, Any]:
    """What the timings depend on: versions, workers, their threads, environment (as each worker
    process has it: what its nanny spawned it with) and the dask config ``keys`` as each
    worker sees them."""
    import dask
    import distributed

    workers = client.scheduler_info()["workers"].values()
    return {"dask": dask.__version__, "distributed": distributed.__version__,
            "workers": len(workers), "threads_per_worker": sorted({w["nthreads"] for w in workers}),
            "worker_env": client.run(environment),
            "worker_threads": client.run(threads),  # the BLAS threads each worker really runs
            "worker_dask_config": client.run(_dask_settings, sorted(keys))}


def _short_shape(r: dict[str, Any], steps: set[str]) -> str:
    if "short" not in steps:
        return r["shape"]
    return r["shape"].replace(" in ", " / ").replace(" chunks", "").replace(
        "VGG-16 conv layers, batch ", "VGG-16 b").replace(" at ", " @")


def table(rows: list[dict[str, Any]], console: Any = None) -> None:
    """The summary, narrowed to the terminal as the benchmark's other tables are (80 columns
    when piped); no value is cut."""
    from rich.console import Console

    from .report import PIPED_WIDTH, Column, fit

    if console is None:
        console = Console() if Console().is_terminal else Console(width=PIPED_WIDTH)
    fit(console, f"xdev.dask against one process (medians; efficiency target >= {TARGET_EFFICIENCY:.2f})", [
        Column("op", lambda r, st: r["op"], left=True),
        Column("shape", _short_shape, left=True),
        Column("one process s", lambda r, st: f"{r['one_process_s']:.3f}", head_short="one s"),
        Column("dask s", lambda r, st: f"{r['dask_s']:.3f}"),
        Column("speedup", lambda r, st: f"{r['speedup']:.2f}"),
        Column("ideal", lambda r, st: f"{r['ideal_speedup']:.0f}", drop="peak"),  # said below the table
        Column("efficiency", lambda r, st: f"{r['efficiency']:.2f}±{r['efficiency_spread']:.2f}"),
        Column("overhead", lambda r, st: f"{r['dask_overhead']:.1%}", drop="ratio"),  # 1 / efficiency - 1
        Column("tasks", lambda r, st: str(r["tasks"]), drop="build"),
        Column("target", lambda r, st: r["target"], left=True)], rows)


def run(a: argparse.Namespace, argv: list[str] | None = None) -> int:
    """Entry point for ``python -m xdev.bench --dask N`` (options parsed by xdev.bench.cli)."""
    da, distributed, xd = _needs()
    n_workers = a.dask  # cli.parse checked N >= 1
    spec = (a.backends or "numpy").split(",")[0].strip()
    dev = get_device(spec)
    dtype = np.dtype(a.dtype)
    dev.check_dtype(dtype)
    repeats = a.repeat or 5
    dask_config: dict[str, Any] = {} if a.dask_defaults else dict(xd.COMPUTE_CONFIG)
    size = a.sizes[0] if a.sizes else (1024 if a.quick else 4096)
    chunk = a.dask_chunk or max(1, size // 4)
    image = a.image if not a.quick else min(a.image, 56)
    batch = a.batch or 2 * n_workers
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []

    def rand(shape: tuple[int, ...], scale: float = 1.0) -> np.ndarray:
        return (rng.uniform(-1, 1, shape) * scale).astype(dtype)

    print(f"xdev.dask on {n_workers} local worker(s) vs one xdev process; backend {dev.key} ({dev.name}), "
          f"{dtype}, {repeats} rounds each, medians")
    # The one-process side of every workload, prepared first: it is timed alone (no cluster on
    # the machine; an idle 2-worker cluster took 0.14 CPU-s/s of 2 cores here), before the
    # cluster starts and after it closes, and beside the idle cluster, alternating with Dask.
    ones: list[Callable[[], None]] = []
    if "matmul" in a.ops:
        A, B = rand((size, size)), rand((size, size))
        xa, xb = xdev.asarray(A, backend=dev.key), xdev.asarray(B, backend=dev.key)

        def one_matmul() -> None:
            xdev.matmul(xa, xb)
            dev.synchronize()

        ones.append(one_matmul)
    layers = wl.vgg16(batch, image) if "conv2d" in a.ops else []
    first_conv = len(ones)  # ones[first_conv + i] is layer i's
    per_task = -(-batch // n_workers)  # one chunk of images per worker
    conv_host: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for layer in layers:
        x = rand((layer.N, layer.C, layer.H, layer.H))
        w, b = rand((layer.O, layer.C, 3, 3), 0.1), rand((layer.O,))
        conv_host.append((x, w, b))
        xs = [xdev.asarray(v, backend=dev.key) for v in (x, w, b)]

        def one_conv(xs: list[Any] = xs) -> None:
            xdev.conv2d(*xs, padding=1)
            dev.synchronize()

        ones.append(one_conv)
    load_before = _load_sample()
    alone = _alternate(ones, repeats)
    beside: list[list[float]] = []  # per workload, in the order of ones
    dask_runs: list[list[float]] = []
    mm: dict[str, Any] = {}  # the matmul's task count, in-place runs and profile
    with ExitStack() as stack:
        client, backend, ideal = _cluster(stack, distributed, xd, n_workers, dev, dask_config)
        # Copies of fetched blocks are dropped by the benchmark itself, between runs (_DaskRun).
        client.amm.stop()
        cluster_config = _cluster_config(client, xd.COMPUTE_CONFIG)
        cluster_config["dask_config_set"] = dask_config
        print(f"cluster: {cluster_config['workers']} workers, "
              + ("Dask's own configuration (--dask-defaults)" if a.dask_defaults else
                 "xdev.dask.COMPUTE_CONFIG: Dask's housekeeping quieted, glibc's malloc in the workers "
                 "(--dask-defaults keeps Dask's own)"))

        def persisted(x: np.ndarray, chunks: Any) -> Any:
            with warnings.catch_warnings():  # the inputs travel once, untimed: no advice about it
                warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
                d = client.persist(da.from_array(x, chunks=chunks))
            distributed.wait(d)
            return d

        def run_dask(make: Callable[[], Any], *inputs: Any, drop_copies: bool = True) -> _DaskRun:
            return _DaskRun(client, distributed, make, list(inputs), drop_copies)

        if "matmul" in a.ops:
            Ad, Bd = persisted(A, chunk), persisted(B, chunk)
            make = lambda: xd.matmul(Ad, Bd, backend=backend)  # noqa: E731
            # Each round: one process; Dask with every input block where it was persisted (the
            # moves are paid); Dask again, finding the copies that run fetched (no moves).
            t1, tn, tw = _alternate([ones[0], run_dask(make, Ad, Bd, drop_copies=False), run_dask(make, Ad, Bd)],
                                    repeats)
            beside.append(t1)
            dask_runs.append(tn)
            tasks = len(make().__dask_graph__()) - len(Ad.__dask_graph__()) - len(Bd.__dask_graph__())
            mm = {"tasks": tasks, "in_place": tw, **_profile(distributed, client, run_dask(make, Ad, Bd), n_workers)}
            del Ad, Bd
        for i, (layer, (x, w, b)) in enumerate(zip(layers, conv_host)):
            Xd = persisted(x, (per_task, layer.C, layer.H, layer.H))
            Wd, Bd = persisted(w, -1), persisted(b, -1)
            make = lambda: xd.conv2d(Xd, Wd, Bd, padding=1, backend=backend)  # noqa: E731
            t1, tn = _alternate([ones[first_conv + i], run_dask(make, Xd, Wd, Bd)], repeats)
            beside.append(t1)
            dask_runs.append(tn)
            print(f"  {layer.name:8s} {layer.shape:32s} one {statistics.median(t1) * 1e3:8.1f} ms   "
                  f"dask {statistics.median(tn) * 1e3:8.1f} ms")
        load = summarize_load(load_before, _load_sample())  # while the workers are alive
    after = _alternate(ones, repeats)
    alone = [x + y for x, y in zip(alone, after)]  # before the cluster and after it

    if "matmul" in a.ops:
        tw = mm.pop("in_place")
        row = _row("matmul", f"{size}^2 in {chunk}^2 chunks", alone[0], beside[0], dask_runs[0],
                   wl.matmul_flops(size, size, size), ideal, **mm)
        in_place = _row("matmul", "", alone[0], beside[0], tw, 1, ideal, mm["tasks"])
        row.update({"one_process_before_s": statistics.median(alone[0][:repeats]),
                    "one_process_after_s": statistics.median(alone[0][repeats:]),
                    "dask_in_place_s": in_place["dask_s"], "dask_in_place_runs_s": tw,
                    "efficiency_in_place": in_place["efficiency"],
                    "efficiency_in_place_spread": in_place["efficiency_spread"],
                    "moving_blocks_share": 1 - in_place["dask_s"] / row["dask_s"]})
        rows.append(row)
    if layers:
        k = first_conv
        per = [_row("conv2d", layer.shape, alone[k + i], beside[k + i], dask_runs[k + i], layer.flops, ideal,
                    -(-layer.N // per_task), layer=layer.name) for i, layer in enumerate(layers)]
        rows += per
        total = [[sum(r[key][j] for r in per) for j in range(len(per[0][key]))]
                 for key in ("one_process_runs_s", "one_process_beside_runs_s", "dask_runs_s")]
        rows.append(_row("conv2d", f"VGG-16 conv layers, batch {batch} at {image}", *total,
                         sum(layer.flops for layer in layers), ideal, sum(r["tasks"] for r in per), layer="total"))

    shown = [r for r in rows if r["op"] != "conv2d" or r.get("layer") == "total"]  # not each conv layer
    print()
    table(shown)
    for r in shown:
        print(f"{r['op']} {r['shape']}: one process alone (before the cluster started and after it closed) "
              f"{r['one_process_s']:.3f} s; beside the idle cluster, alternating with Dask, "
              f"{r['one_process_beside_s']:.3f} s, against which Dask's efficiency is "
              f"{r['efficiency_beside']:.2f}±{r['efficiency_beside_spread']:.2f}")
        if r.get("dask_in_place_s") is not None:
            print(f"{r['op']} {r['shape']}: with every block already where its task runs (copies kept from the run "
                  f"before) Dask takes {r['dask_in_place_s']:.3f} s, efficiency {r['efficiency_in_place']:.2f}±"
                  f"{r['efficiency_in_place_spread']:.2f}: moving blocks between workers is "
                  f"{r['moving_blocks_share']:.0%} of a run; the rest of the overhead is Dask's scheduling and its "
                  f"processes' own work (event loops, heartbeats, monitors) on the shared cores")
        if r.get("worker_busy") is not None:
            print(f"{r['op']} {r['shape']}: in a profiled Dask run of {r['profiled_wall_s']:.3f} s the workers computed "
                  f"{r['worker_busy']:.0%} of the time ({r['worker_compute_s']:.3f} s over {n_workers} worker(s)) and "
                  f"spent {r['worker_transfer_s']:.3f} s receiving blocks; the rest is Dask's scheduling and idle time")
    print("efficiency = (t one process alone / t dask) / ideal speedup; ideal = N for GPU workers, 1 for CPU "
          "workers sharing the cores one process already uses; ± is the efficiency's spread, from both sides' "
          "interquartile ranges. Timings on a shared machine vary: the alternating comparison beside the idle "
          "cluster is the one least moved by drift.")
    for w in load["warnings"]:
        print(f"warning: {w}; the ratios may be off")
    if a.json:
        doc = {"schema": SCHEMA, "run": run_block(argv, load),
               "config": {"workers": n_workers, "backend": dev.key, "device": dev.info(), "dtype": str(dtype),
                          "size": size, "chunk": chunk, "batch": batch, "image": image, "repeats": repeats,
                          "cpu_count": os.cpu_count(), "cluster": cluster_config},
               "results": rows}
        with open(a.json, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        print(f"wrote {a.json}")
    return 0
