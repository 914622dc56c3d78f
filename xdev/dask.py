"""xdev's matmul and conv2d on Dask arrays: Dask schedules, moves and holds the blocks; each
block product runs through xdev on the device of the worker that runs it.

    import dask.array as da, xdev.dask
    from dask.distributed import Client
    client = Client(xdev.dask.local_cluster(2))   # or any cluster: dask-cuda, a remote scheduler
    C = xdev.dask.matmul(A, B)            # A, B: dask arrays of host (NumPy) chunks
    Y = xdev.dask.conv2d(X, w, bias, padding=1)

The backend resolves on the worker: ``backend=`` if given, else the worker's own default
(``XDEV_BACKEND`` in the worker's environment, then numpy). Results are dask arrays of NumPy
chunks. Needs ``pip install "xdev[dask]"``; see docs/dask.md for clusters of GPUs and nodes.
"""
from __future__ import annotations

import ast
import contextlib
import logging
import operator
import os
import sys
import threading
import weakref
from collections.abc import Mapping
from functools import reduce
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

try:
    import dask.array as da
except ImportError as e:  # pragma: no cover - the extra is missing
    raise ImportError(
        f'xdev.dask needs dask.array, which is not installed ({e}); install it with: pip install "xdev[dask]"'
    ) from e

import xdev
from xdev._registry import split_selector
from xdev.contract import DTYPES, DTYPES_TEXT, F16 as _F16, F32 as _F32, conv_params, env

if TYPE_CHECKING:
    from distributed import LocalCluster

__all__ = ["matmul", "conv2d", "local_cluster", "COMPUTE_CONFIG"]


# ---- clusters ---------------------------------------------------------------------------------
# Dask settings for clusters whose tasks are compute-bound blocks on cores the workers share.
# Dask's housekeeping at its defaults took 0.13 CPU-s/s of 2 cores on an idle 2-worker
# LocalCluster, 0.016 with the first four below (bench/dask_probes/idle_cluster_cpu.py), and
# a 2-thread GEMM in the client's process ran 5-10% slower beside it. Those four give up
# diagnostics, not scheduling. The fifth gives the workers glibc's own malloc, as every other
# Python process has: Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536, which also fixes
# glibc's mmap threshold at 128 KiB, so every received block, panel and product is a fresh
# mmap, page-faulted and zeroed (docs/dask.md). Read-only: it is local_cluster's default.
COMPUTE_CONFIG: Mapping[str, Any] = MappingProxyType({
    # the statistical profiler's stack sample of every worker thread, every 10 ms (the
    # dashboard's profile page stays empty)
    "distributed.worker.profile.enabled": False,
    # the event-loop responsiveness probe, every 20 ms ("event loop was unresponsive" still
    # logs blocks longer than distributed.admin.tick.limit)
    "distributed.admin.tick.interval": "1s",
    # each nanny's poll of its worker's memory, every 100 ms: spill, pause and restart at the
    # memory limits react within 1 s instead
    "distributed.worker.memory.monitor-interval": "1s",
    # psutil's CPU, memory and network sample of every server, every 500 ms (the dashboard's
    # system plots get coarser)
    "distributed.admin.system-monitor.interval": "5s",
    # None: not set in the worker processes. Freed memory goes back to the OS less eagerly;
    # Dask counts what a worker keeps as unmanaged memory.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
})

_BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
# local_cluster changes the process-wide Dask config and os.environ while its cluster starts.
_starting = threading.Lock()


def _cores() -> int:
    """The cores this process may run on (its affinity: a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _unguarded_main_line(method: str) -> tuple[str, int] | None:
    """(file, line) where the main module, still running its top level, calls this outside an
    ``if __name__ == "__main__":`` block, when the worker processes would run that line again
    (they start by importing the main module, as multiprocessing's spawn and forkserver do);
    else None. What multiprocessing imports again is mirrored here: the main module's file, or
    its module name unless that is a package's ``__main__`` (not imported again)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or method == "fork":
        return None
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return None
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is main.__dict__ and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None:
        return None  # the main module's top level is not running this (a thread, a callback)
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        # Any `if` that tests __name__ around the line counts as a guard (no false alarm).
        if (isinstance(node, ast.If) and node.lineno <= line <= (node.end_lineno or node.lineno)
                and any(isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))):
            return None
    return path, line


class _ClosingHeartbeat(logging.Filter):
    """Drops the heartbeat failure a worker logs while it is itself closing.

    A worker closing its connection pool under a heartbeat still in flight (on a busy machine,
    when the cluster shuts down) logs "Failed to communicate with scheduler during heartbeat"
    with three chained tracebacks, although nothing failed: the worker was on its way out.
    The same message from a running worker (a scheduler gone missing) still shows.
    """

    def __init__(self, worker: Any) -> None:
        super().__init__()
        self._worker = weakref.ref(worker)

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Failed to communicate with scheduler during heartbeat"):
            return True
        w = self._worker()
        return w is not None and getattr(w.status, "name", "") not in ("closing", "closing_gracefully", "closed")


def dask_setup(worker: Any) -> None:
    """Dask's preload hook, run in each worker process ``local_cluster`` starts."""
    logging.getLogger("distributed.worker").addFilter(_ClosingHeartbeat(worker))


def local_cluster(n_workers: int = 2, *, dask_config: Mapping[str, Any] | None = COMPUTE_CONFIG,
                  **kwargs: Any) -> LocalCluster:
    """A ``distributed.LocalCluster`` for xdev's block products on this machine's CPU.

    ``n_workers`` worker processes of one thread each, the cores' BLAS threads split among
    them (``OPENBLAS_NUM_THREADS`` etc. = cores // n_workers: more would make OpenBLAS spin
    against itself), with ``dask_config`` in effect for the scheduler, the nannies and the
    worker processes it starts (for worker processes that ``cluster.scale`` adds later too;
    their nannies and pre-spawn environment are Dask's). The default, ``COMPUTE_CONFIG``,
    quiets Dask's housekeeping and leaves malloc at glibc's defaults; ``None`` leaves Dask's
    configuration as it is. Other keyword arguments go to ``LocalCluster`` and win; ``env=``
    is merged over the BLAS settings and ``config=`` over ``dask_config``. Use it as
    ``with local_cluster(2) as cluster, Client(cluster) as client:``.
    """
    import dask.config
    import distributed

    try:
        if isinstance(n_workers, bool):
            raise TypeError
        n = operator.index(n_workers)
    except TypeError:
        raise TypeError(f"xdev.dask.local_cluster: n_workers is a number of worker processes, an int; received "
                        f"{n_workers!r} ({type(n_workers).__name__}); pass e.g. local_cluster(2)") from None
    if n < 1:
        raise ValueError(f"xdev.dask.local_cluster: n_workers must be at least 1; received {n_workers!r}; "
                         f"pass e.g. local_cluster(2)")
    for key, why in (("processes", "BLAS threads and malloc are set per worker process"),
                     ("asynchronous", "the settings are in effect only while the constructor starts the cluster")):
        if kwargs.get(key) is not None and bool(kwargs[key]) != (key == "processes"):
            raise ValueError(
                f"xdev.dask.local_cluster starts worker processes synchronously ({why}); received "
                f"{key}={kwargs[key]!r}; use distributed.LocalCluster directly for that, with "
                f"dask.config.set(xdev.dask.COMPUTE_CONFIG) around it if you want those settings")
    method = str((dask_config or {}).get("distributed.worker.multiprocessing-method")
                 or dask.config.get("distributed.worker.multiprocessing-method", "spawn"))
    where = _unguarded_main_line(method)
    if where is not None:
        # Else each worker process runs this line again while it starts, and the user gets
        # "Nanny failed to start" under pages of tracebacks from every worker.
        raise RuntimeError(
            f"xdev.dask.local_cluster was called at {where[0]} line {where[1]}, outside an "
            f"`if __name__ == \"__main__\":` block: Dask's worker processes start by importing the main "
            f"module again ({method}), and each would run that line too; put the code that starts the "
            f"cluster under `if __name__ == \"__main__\":` (docs/dask.md)")
    threads = str(max(1, _cores() // n))
    worker_env = {v: threads for v in _BLAS_THREADS}
    worker_env.update({k: str(v) for k, v in (kwargs.pop("env", None) or {}).items()})
    cfg = dict(dask_config or {})
    kwargs.pop("processes", None)  # checked above: True or None
    kwargs.pop("asynchronous", None)  # ... False or None
    preload = kwargs.pop("preload", None) or []
    preload = [preload] if isinstance(preload, str) else list(preload)
    opts: dict[str, Any] = {"n_workers": n, "threads_per_worker": 1, **kwargs, "processes": True, "env": worker_env,
                            "preload": [*preload, __name__]}  # dask_setup above, in every worker
    if cfg or "config" in kwargs:
        # A nanny reads the global config when it is created; this reaches the worker processes
        # of later scale-ups, which start after the `with` below has ended. Dotted keys: the
        # nanny adds them to a shallow copy of the global config, and the worker process sets
        # them after it (a nested {"distributed": ...} would replace Dask's whole section).
        opts["config"] = {**cfg, **(kwargs.get("config") or {})}
    # A worker's BLAS reads its thread count when the worker process imports NumPy, before its
    # nanny applies env=, and malloc reads MALLOC_* when the process starts: both belong in
    # the environment the process is spawned with, Dask's pre-spawn environment. The nanny
    # takes those values from os.environ first (where an earlier nanny of this process left
    # Dask's) and the process inherits os.environ, so for the start os.environ holds the
    # values that differ from Dask's (and lacks those set to None). The nanny also copies its
    # pre-spawn environment into os.environ; all of it is restored once the cluster runs.
    with _starting:
        base = dict(dask.config.get(_PRE_SPAWN, None) or {})
        with dask.config.set(cfg):
            spawn = {**(dask.config.get(_PRE_SPAWN, None) or {}), **{v: worker_env[v] for v in _BLAS_THREADS}}
            start_env = {k: (None if v is None else str(v)) for k, v in spawn.items()
                         if v is None or k in _BLAS_THREADS or base.get(k) != v}
            with env.for_children(start_env, restore={*spawn, "PYTHONHASHSEED"}), \
                    dask.config.set({_PRE_SPAWN: spawn}):
                return distributed.LocalCluster(**opts)


# ---- what runs on the workers (module-level functions: picklable by reference) ------------------
def _on(backend: str | None) -> contextlib.AbstractContextManager[None]:
    return xdev.use_backend(backend) if backend is not None else contextlib.nullcontext()


def _host(c: xdev.Array) -> np.ndarray:
    # A numpy-backend result is a fresh host array that nothing else holds: hand it over as is.
    return c.data if c.backend == "numpy" else c.numpy()


def _block_matmul(a: np.ndarray, b: np.ndarray, backend: str | None, part_dtype: np.dtype) -> np.ndarray:
    """One block product a @ b on this worker's device, with a length-1 axis for the K block.

    float16 blocks of a split K run as float32 products (float16 accumulates in float32
    anyway): a float16 partial would be rounded before the sum of the K blocks.
    """
    with _on(backend):
        c = _host(xdev.matmul(a.astype(part_dtype, copy=False), b.astype(part_dtype, copy=False)))
    return c[..., np.newaxis, :]


# The K blocks of one output block are copied side by side into two panels that each worker
# thread keeps, so the block is one xdev.matmul with its full K: one upload, one product and
# one download on a GPU, and on the CPU no fresh memory per partial product. Dask's workers
# trim malloc's heap (MALLOC_TRIM_THRESHOLD_), so every 4 MiB partial product would be a
# fresh mmap, page-faulted in while the worker's other thread received blocks: on 2 CPU workers,
# 4096^2 in 1024^2 chunks, that cost 5-10% of the run (docs/dask.md). The panels of one
# thread are capped at PANEL_BYTES; K blocks beyond that go in further groups.
PANEL_BYTES = 64 << 20
_panels = threading.local()


def _panel(name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """This thread's reusable buffer ``name`` viewed as an array of ``shape`` (grown on demand)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = getattr(_panels, name, None)
    if buf is None or buf.nbytes < n:
        del buf
        setattr(_panels, name, None)  # the old buffer goes before the larger one is allocated
        buf = np.empty(n, np.uint8)
        setattr(_panels, name, buf)
    return buf[:n].view(dtype).reshape(shape)


def _k_groups(a_blocks: list[np.ndarray], b_blocks: list[np.ndarray], itemsize: int) -> list[range]:
    """Consecutive K blocks whose two panels fit PANEL_BYTES together (at least one block each)."""
    groups: list[range] = []
    start, used = 0, 0
    for i, (a, b) in enumerate(zip(a_blocks, b_blocks)):
        nbytes = (a.size + b.size) * itemsize
        if i > start and used + nbytes > PANEL_BYTES:
            groups.append(range(start, i))
            start, used = i, 0
        used += nbytes
    groups.append(range(start, len(a_blocks)))
    return groups


def _block_matmul_sum(a_blocks: Any, b_blocks: Any, backend: str | None, part_dtype: np.dtype) -> np.ndarray:
    """Sum over k of a_k @ b_k on this worker's device (the K blocks of one output block)."""
    if isinstance(a_blocks, np.ndarray):  # a single K block arrives unwrapped
        a_blocks, b_blocks = [a_blocks], [b_blocks]
    out_dt = np.result_type(a_blocks[0].dtype, b_blocks[0].dtype)
    groups = _k_groups(a_blocks, b_blocks, part_dtype.itemsize)
    if len(groups) == 1:  # no partial sums: float16 runs as float16 (xdev accumulates in float32)
        part_dtype = out_dt
    acc: np.ndarray | None = None
    with _on(backend):
        for g in groups:
            if len(g) == 1:  # a lone block is used where it is, converted only if it must be
                a = a_blocks[g[0]].astype(part_dtype, copy=False)
                b = b_blocks[g[0]].astype(part_dtype, copy=False)
            else:
                a0, b0 = a_blocks[g[0]], b_blocks[g[0]]
                k = sum(a_blocks[i].shape[-1] for i in g)
                a = _panel("a", a0.shape[:-1] + (k,), part_dtype)
                b = _panel("b", b0.shape[:-2] + (k, b0.shape[-1]), part_dtype)
                np.concatenate([a_blocks[i] for i in g], axis=-1, out=a)
                np.concatenate([b_blocks[i] for i in g], axis=-2, out=b)
            # The product is downloaded (or, on numpy, fresh) before the panels are refilled.
            c = _host(xdev.matmul(a, b))
            if acc is None:
                acc = c
            else:  # float16 groups are float32 products here: one rounding, at the end
                np.add(acc, c, out=acc)
    assert acc is not None
    return acc.astype(out_dt, copy=False)


def _sum_parts(parts: Any, axis: tuple[int, ...], keepdims: bool, dtype: Any = None) -> np.ndarray:
    """Sum the partial products of the K blocks (all of one shape, length 1 along ``axis``)."""
    out = reduce(np.add, parts) if isinstance(parts, list) else parts
    return out if keepdims else out.squeeze(axis[0])


def _block_conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None, *, kw: dict[str, Any],
                backend: str | None) -> np.ndarray:
    with _on(backend):
        return _host(xdev.conv2d(x, w, bias, **kw))


# ---- the graphs (built on the client) ------------------------------------------------------------
def _check_backend(backend: str | None) -> None:
    # Only the name is checked here: the device itself is opened on the worker.
    if backend is not None:
        split_selector(backend)


def _result_dtype(*dts: np.dtype, op: str) -> np.dtype:
    """NumPy's promotion, as xdev.matmul and xdev.conv2d compute it (integers and bool exactly:
    their partial sums over K blocks wrap around, or are or-ed, as the whole product would)."""
    if any(np.dtype(d) not in DTYPES for d in dts):
        raise TypeError(
            f"xdev.dask.{op}: xdev computes in {DTYPES_TEXT}; received dtype(s) "
            f"{', '.join(str(np.dtype(d)) for d in dts)}; convert first, e.g. X.astype('float32')"
        )
    return np.dtype(np.result_type(*dts))


def matmul(a: Any, b: Any, *, backend: str | None = None, reduce_k: str = "auto",
           split_every: int | None = None) -> da.Array:
    """``numpy.matmul`` of dask arrays, blocked along M, N and K, each block product through xdev.

    Block (i, k) of ``a`` meets block (k, j) of ``b`` on a worker, and the partial products
    along K are summed; ``reduce_k`` says where:

    - ``"task"``: one task per output block copies its K blocks side by side into panels the
      worker thread reuses and runs one xdev.matmul with the full K (Dask's blockwise
      contraction: no partials move between workers; K beyond ``PANEL_BYTES`` of panels
      runs in groups whose products are summed in place);
    - ``"tree"``: every block pair is its own task and a Dask tree reduction sums the partials
      (``split_every`` per step): more parallelism when the output has few blocks;
    - ``"auto"`` (default): ``"tree"`` when the output has fewer blocks than K has, else ``"task"``.

    ``b``'s K chunks are aligned to ``a``'s. float16 partials are summed in float32, so the
    result obeys xdev's bound with K the full contraction length.
    """
    _check_backend(backend)
    if reduce_k not in ("auto", "task", "tree"):
        raise ValueError(f"xdev.dask.matmul: reduce_k is 'auto', 'task' or 'tree'; received {reduce_k!r}")
    a, b = da.asarray(a), da.asarray(b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"xdev.dask.matmul: operands must have at least 1 dimension; received shapes "
                         f"{a.shape} and {b.shape} (use multiplication for scalars)")
    dt = _result_dtype(a.dtype, b.dtype, op="matmul")
    a, b = a.astype(dt, copy=False), b.astype(dt, copy=False)
    a_1d, b_1d = a.ndim == 1, b.ndim == 1
    if a_1d:
        a = a[np.newaxis, :]
    if b_1d:
        b = b[:, np.newaxis]
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(
            f"xdev.dask.matmul: shapes {a.shape} and {b.shape} do not align: the last axis of a "
            f"({a.shape[-1]}) must equal the second-to-last of b ({b.shape[-2]})"
        )
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"xdev.dask.matmul: batch dimensions {a.shape[:-2]} and {b.shape[:-2]} of shapes "
                         f"{a.shape} and {b.shape} do not broadcast") from None
    nd = len(batch) + 2
    a = a[(np.newaxis,) * (nd - a.ndim)]
    b = b[(np.newaxis,) * (nd - b.ndim)]
    if b.chunks[-2] != a.chunks[-1]:
        b = b.rechunk({nd - 2: a.chunks[-1]})
    nk = len(a.chunks[-1])
    # float16 partials would be rounded to float16 before the sum: keep them in float32.
    part = _F32 if (dt == _F16 and nk > 1) else dt
    lhs = tuple(range(nd))  # (batch..., i, k)
    rhs = tuple(range(nd - 2)) + (nd - 1, nd)  # (batch..., k, j)
    if reduce_k == "auto":
        out_blocks = int(np.prod([max(len(ca), len(cb)) for ca, cb in zip(a.chunks[:-2], b.chunks[:-2])]))
        out_blocks *= len(a.chunks[-2]) * len(b.chunks[-1])
        reduce_k = "tree" if out_blocks < nk else "task"
    if reduce_k == "task" or nk == 1:
        # k is contracted: each task gets the lists of its K blocks (concatenate=False).
        out = da.blockwise(
            _block_matmul_sum, lhs[:-1] + (nd,), a, lhs, b, rhs, dtype=dt, concatenate=False,
            meta=np.empty((0,) * nd, dt), backend=backend, part_dtype=part,
        )
    else:
        # Output index (batch..., i, k, j): k stays an axis with one chunk of length 1 per K
        # block, so every block pair is its own task; the reduction sums along it.
        parts = da.blockwise(
            _block_matmul, tuple(range(nd + 1)), a, lhs, b, rhs,
            adjust_chunks={nd - 1: 1}, dtype=part, concatenate=False,
            meta=np.empty((0,) * (nd + 1), part), backend=backend, part_dtype=part,
        )
        out = da.reduction(parts, _sum_parts, _sum_parts, axis=-2, dtype=part, concatenate=False,
                           split_every=split_every, meta=np.empty((0,) * nd, part))
        if part != dt:
            out = out.astype(dt)
    if a_1d:
        out = out.squeeze(-2)
    if b_1d:
        out = out.squeeze(-1)
    return out


def _whole(v: Any) -> da.Array:
    """A dask array of one chunk: one key, which Dask ships once to each worker that needs it."""
    if isinstance(v, da.Array):
        return v.rechunk(-1)
    v = np.asarray(v)
    return da.from_array(v, chunks=v.shape or -1)


def conv2d(x: Any, w: Any, bias: Any = None, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
           groups: int = 1, algorithm: str = "auto", *, backend: str | None = None) -> da.Array:
    """``xdev.conv2d`` of a dask array ``x`` (N, C, H, W), chunked along the batch.

    ``w`` and ``bias`` (NumPy or dask arrays) become one single-chunk dask array each: Dask
    sends them once to each worker that needs them, not once per task. Chunks of ``x``
    along C, H or W are merged first: a convolution needs whole images.
    """
    _check_backend(backend)
    x = da.asarray(x)
    if x.ndim not in (3, 4):
        raise ValueError(f"xdev.dask.conv2d expects x of shape (N, C, H, W) or (C, H, W); received shape {x.shape}")
    unbatched = x.ndim == 3
    if unbatched:
        x = x[np.newaxis]
    w = _whole(w)
    b = None if bias is None else _whole(bias)
    dts = [x.dtype, w.dtype] + ([] if b is None else [b.dtype])
    dt = _result_dtype(*dts, op="conv2d")
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, algorithm=algorithm)
    # Shapes and parameters are checked here, on the client, with xdev's own messages.
    p = conv_params(tuple(x.shape), tuple(w.shape), None if b is None else tuple(b.shape),
                    stride, padding, dilation, groups)
    Ho, Wo = p.Ho, p.Wo
    x = x.astype(dt, copy=False).rechunk({1: -1, 2: -1, 3: -1})
    w = w.astype(dt, copy=False)
    args: list[Any] = [x, "nchw", w, "opqr"]
    if b is not None:
        args += [b.astype(dt, copy=False), "o"]
    # Output (n, o, y, z): n follows x's batch chunks, o w's single chunk, (y, z) are new axes;
    # C, H, W and w's other axes are single chunks, passed whole (concatenate=True).
    y = da.blockwise(
        _block_conv, "noyz", *args, new_axes={"y": Ho, "z": Wo}, concatenate=True, dtype=dt,
        meta=np.empty((0, 0, 0, 0), dt), kw=kw, backend=backend,
    )
    return y[0] if unbatched else y
