"""xdev.dask on a dask.distributed LocalCluster of 2 workers (threads: quick to start, and the
workers resolve their backend the way separate processes would: XDEV_BACKEND or backend=).

Every result is held to the suite's one bound with K the full contraction length, and the
same inputs through xdev in this process are held to it too.
"""
from __future__ import annotations

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason='xdev.dask needs dask: pip install "xdev[dask]"')
distributed = pytest.importorskip("distributed", reason='the tests need distributed: pip install "xdev[dask]"')

import xdev  # noqa: E402
import xdev.dask as xd  # noqa: E402
from xdev._registry import get_device  # noqa: E402

from availability import backend_status, require  # noqa: E402
from reference import conv2d_ref, matmul_ref  # noqa: E402
from strategies import supported_dtypes  # noqa: E402
from tolerance import assert_agrees  # noqa: E402


@pytest.fixture(scope="session")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


def _rand(shape, dtype, seed):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _worker_device():
    """The device the workers resolve to (threads of this process: its default backend)."""
    return get_device(xdev.get_backend())


def _dtypes():
    return supported_dtypes(_worker_device())


def _check_matmul(client, a, b, chunks_a, chunks_b, what, **kw):
    dev = _worker_device()
    A, B = da.from_array(a, chunks=chunks_a), da.from_array(b, chunks=chunks_b)
    C = xd.matmul(A, B, **kw)
    y = C.compute()
    ref, ref_abs = matmul_ref(a, b)
    K = a.shape[-1]
    out = np.result_type(a.dtype, b.dtype)
    assert C.shape == ref.shape and C.dtype == out
    assert_agrees(y, ref, ref_abs, K, dev.acc_dtype(out), out, f"xdev.dask {what}")
    single = xdev.matmul(a, b, backend=kw.get("backend") or dev.key).numpy()
    assert_agrees(single, ref, ref_abs, K, dev.acc_dtype(out), out, f"xdev single process {what}")
    return C


def test_matmul_blocked_along_m_n_and_k(client):
    for dt in _dtypes():
        a, b = _rand((70, 131), dt, 1), _rand((131, 45), dt, 2)
        # Uneven chunks on every axis, and the K axis split into 4 blocks (32+32+32+35).
        C = _check_matmul(client, a, b, ((20, 30, 20), (32, 32, 32, 35)), ((32, 32, 32, 35), (16, 29)),
                          f"2-D {dt}")
        assert C.chunks == ((20, 30, 20), (16, 29))


def test_matmul_k_beyond_the_panel_cap_runs_in_groups(client, monkeypatch):
    """K blocks that do not fit PANEL_BYTES together run in several products, summed in place;
    float16 partials are float32 until the end (bound with K the full length)."""
    a_shape, b_shape = (24, 150), (150, 10)
    # 6 K blocks of 25: (24*25 + 25*10) * 4 bytes = 3400 per float32 block pair; a cap of
    # 7000 bytes groups them 2 + 2 + 2, and float16 partials are float32 (4 bytes) as well.
    monkeypatch.setattr(xd, "PANEL_BYTES", 7000)  # the workers are threads of this process
    groups = xd._k_groups([np.empty((24, 25))] * 6, [np.empty((25, 10))] * 6, 4)
    assert [list(g) for g in groups] == [[0, 1], [2, 3], [4, 5]]
    for dt in _dtypes():
        a, b = _rand(a_shape, dt, 30), _rand(b_shape, dt, 31)
        _check_matmul(client, a, b, (12, 25), (25, 5), f"K in 3 groups of panels, {np.dtype(dt)}", reduce_k="task")
    # A block pair larger than the cap is its own group, used in place.
    assert [list(g) for g in xd._k_groups([np.empty((100, 100))] * 2, [np.empty((100, 100))] * 2, 4)] == [[0], [1]]


def test_block_products_reuse_the_panels_and_never_alias_them():
    rng = np.random.default_rng(32)
    a = [rng.standard_normal((16, 8)).astype(np.float32) for _ in range(3)]
    b = [rng.standard_normal((8, 12)).astype(np.float32) for _ in range(3)]
    f32 = np.dtype(np.float32)
    c1 = xd._block_matmul_sum(a, b, "numpy", f32)
    kept = c1.copy()
    panel = xd._panels.a
    c2 = xd._block_matmul_sum([x + 1 for x in a], b, "numpy", f32)  # refills the same panels
    assert xd._panels.a is panel  # reused, not reallocated
    np.testing.assert_array_equal(c1, kept)  # the first result is not a view of a panel
    assert not np.shares_memory(c2, panel)
    np.testing.assert_allclose(c1, sum(x @ y for x, y in zip(a, b)), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::dask.array.core.PerformanceWarning")  # dask's note on rechunking
def test_matmul_k_chunks_that_differ_are_aligned(client):
    a, b = _rand((33, 64), np.float32, 3), _rand((64, 17), np.float32, 4)
    _check_matmul(client, a, b, (11, 16), (24, 5), "misaligned K chunks")


@pytest.mark.parametrize("reduce_k", ["task", "tree"])
def test_matmul_both_k_reductions(client, reduce_k):
    for dt in [d for d in _dtypes() if d != np.float64]:
        a, b = _rand((24, 200), dt, 5), _rand((200, 14), dt, 6)
        # 20 K blocks: summed in the output block's task, or by a tree of 3 partials per step.
        _check_matmul(client, a, b, (12, 10), (10, 7), f"20 K blocks, {reduce_k}, {np.dtype(dt)}",
                      reduce_k=reduce_k, split_every=3)
    # auto: a 1x1-block output with 20 K blocks is summed by a tree (K gives the parallelism).
    C = xd.matmul(da.from_array(a, chunks=(24, 10)), da.from_array(b, chunks=(10, 14)))
    assert any("sum_parts" in str(k) for k in C.__dask_graph__().keys())
    with pytest.raises(ValueError, match="reduce_k"):
        xd.matmul(a, b, reduce_k="ring")


@pytest.mark.parametrize("reduce_k", ["task", "tree"])
@pytest.mark.parametrize("dt", [np.int8, np.uint32, np.bool_], ids=lambda t: np.dtype(t).name)
def test_matmul_of_integers_is_exact_across_k_blocks(client, reduce_k, dt):
    """Integer partial products over K blocks wrap around (bool: or) as the whole product does."""
    from reference import matmul_exact
    from strategies import int_values, supported_exact_dtypes

    if np.dtype(dt) not in supported_exact_dtypes(_worker_device()):
        pytest.skip(f"{_worker_device().key} has no {np.dtype(dt)}")
    a, b = int_values(1, (30, 41), dt), int_values(2, (41, 20), dt)
    C = xd.matmul(da.from_array(a, chunks=(10, 15)), da.from_array(b, chunks=(15, 10)), reduce_k=reduce_k)
    y = C.compute()
    assert C.dtype == y.dtype == np.dtype(dt) and np.array_equal(y, matmul_exact(a, b, dt))


def test_matmul_batched_and_broadcast(client):
    a, b = _rand((3, 1, 12, 20), np.float64, 7), _rand((4, 20, 9), np.float64, 8)
    C = _check_matmul(client, a, b, (2, 1, 6, 10), (3, 10, 5), "batched, broadcast")
    assert C.shape == (3, 4, 12, 9)


def test_matmul_one_dimensional_operands(client):
    v, m = _rand((20,), np.float64, 9), _rand((20, 6), np.float64, 10)
    _check_matmul(client, v, m, 7, (6, 4), "vector @ matrix")
    _check_matmul(client, m.T.copy(), v, (4, 6), 7, "matrix @ vector")


def test_matmul_on_a_named_backend(client):
    require("opencl")
    a, b = _rand((30, 50), np.float32, 11), _rand((50, 20), np.float32, 12)
    C = xd.matmul(da.from_array(a, chunks=(15, 25)), da.from_array(b, chunks=(25, 10)), backend="opencl")
    ref, ref_abs = matmul_ref(a, b)
    dev = get_device("opencl")
    assert_agrees(C.compute(), ref, ref_abs, 50, dev.acc_dtype(np.float32), np.float32, "backend='opencl'")


def test_conv2d_chunked_along_the_batch(client):
    dev = _worker_device()
    x, w, b = _rand((5, 6, 11, 9), np.float32, 13), _rand((4, 3, 3, 2), np.float32, 14), _rand((4,), np.float32, 15)
    kw = dict(stride=(2, 1), padding=1, dilation=(1, 2), groups=2)
    # Uneven batch chunks; the C and H chunks are merged by xdev.dask (whole images per task).
    X = da.from_array(x, chunks=(2, 3, 5, 9))
    Y = xd.conv2d(X, w, b, **kw)
    assert Y.chunks[0] == (2, 2, 1) and len(Y.chunks[1]) == 1
    y = Y.compute()
    ref, ref_abs = conv2d_ref(x, w, b, **kw)
    K = 3 * 3 * 2
    assert_agrees(y, ref, ref_abs, K, dev.acc_dtype(np.float32), np.float32, "xdev.dask conv2d")
    single = xdev.conv2d(x, w, b, **kw, backend=dev.key).numpy()
    assert_agrees(single, ref, ref_abs, K, dev.acc_dtype(np.float32), np.float32, "xdev conv2d")
    y1 = xd.conv2d(da.from_array(x[0], chunks=2), w, None, padding="same", groups=2).compute()  # (C, H, W)
    ref1, ref1_abs = conv2d_ref(x[:1], w, None, padding="same", groups=2)
    assert_agrees(y1, ref1[0], ref1_abs[0], K, dev.acc_dtype(np.float32), np.float32, "unbatched")


def test_conv2d_weights_are_one_key_shared_by_every_task(client):
    x, w = _rand((6, 3, 8, 8), np.float32, 16), _rand((5, 3, 3, 3), np.float32, 17)
    W = da.from_array(w, chunks=(2, 3, 3, 3), name="weights-under-test")  # chunked: merged into one
    Y = xd.conv2d(da.from_array(x, chunks=(1, 3, 8, 8)), W, padding=1)
    graph = dict(Y.__dask_graph__())
    conv_tasks = [k for k in graph if isinstance(k, tuple) and k[0].startswith("block_conv")]
    assert len(conv_tasks) == 6
    # Every conv task reads the single merged weight key (Dask moves it once per worker).
    deps = Y.__dask_graph__().get_all_dependencies()
    wkeys = set.union(*(deps[k] for k in conv_tasks)) - {k for k in graph if "array-" in str(k[0])}
    assert len(wkeys) == 1, wkeys
    np.testing.assert_allclose(Y.compute(), xdev.conv2d(x, w, padding=1).numpy(), rtol=0, atol=0)


def test_errors_are_raised_on_the_client_before_any_work(client):
    A = da.ones((4, 5), chunks=2)
    with pytest.raises(ValueError, match="do not align"):
        xd.matmul(A, da.ones((4, 5), chunks=2))
    with pytest.raises(TypeError, match="received dtype.s. complex64, float64"):
        xd.matmul(A.astype(np.complex64), A.T)
    with pytest.raises(ValueError, match="unknown backend"):
        xd.matmul(A, A.T, backend="metal")
    with pytest.raises(ValueError, match="input channels per group"):
        xd.conv2d(da.ones((2, 4, 5, 5), chunks=1), np.ones((3, 3, 3, 3)))


def test_a_worker_error_surfaces_as_an_exception(client):
    x, w = da.ones((4, 2, 5, 5), chunks=1), np.ones((2, 2, 3, 3))
    with pytest.raises(ValueError, match="algorithm 'winograd'"):
        xd.conv2d(x, w, algorithm="winograd").compute()
    if not backend_status("cuda").available:  # the device opens on the worker, and fails there
        with pytest.raises(xdev.BackendUnavailable, match="cuda"):
            xd.matmul(da.ones((4, 4), chunks=2), da.ones((4, 4), chunks=2), backend="cuda").compute()
    # The cluster is still usable afterwards.
    assert float(xd.matmul(da.ones((4, 4), chunks=2), da.ones((4, 4), chunks=2)).sum().compute()) == 64.0


def test_works_without_a_cluster():
    a, b = _rand((10, 12), np.float64, 18), _rand((12, 5), np.float64, 19)
    y = xd.matmul(da.from_array(a, chunks=4), da.from_array(b, chunks=4)).compute(scheduler="sync")
    ref, ref_abs = matmul_ref(a, b)
    dev = _worker_device()
    assert_agrees(y, ref, ref_abs, 12, dev.acc_dtype(np.float64), np.float64, "synchronous scheduler")





# Everything a nanny copies into this process's os.environ when it starts a worker: restored
# after each test by monkeypatch, so no later test (nor the benchmark subprocesses) inherits it.
_SPAWN_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_",
              "PYTHONHASHSEED")
# Dask's own values of COMPUTE_CONFIG's keys: the tests run with them whatever a Dask YAML
# file on this machine says (docs/dask.md suggests one with COMPUTE_CONFIG's values).
_DASK_DEFAULTS = {"distributed.worker.profile.enabled": True, "distributed.admin.tick.interval": "20ms",
                  "distributed.worker.memory.monitor-interval": "100ms",
                  "distributed.admin.system-monitor.interval": "500ms",
                  "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}


@pytest.fixture
def spawn_env(monkeypatch):
    import dask

    for k in _SPAWN_ENV:
        monkeypatch.delenv(k, raising=False)
    with dask.config.set(_DASK_DEFAULTS):
        yield monkeypatch


def _dask_settings(keys):
    import os

    import dask

    try:  # the BLAS threads the worker really runs: its env var alone may have come too late
        from threadpoolctl import threadpool_info

        blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
    except ImportError:
        blas = None
    return {"config": {k: dask.config.get(k) for k in keys}, "blas_env": os.environ.get("OPENBLAS_NUM_THREADS"),
            "blas": blas, "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def _check_blas(seen, threads):
    """The worker's BLAS thread count: the variable as set, and the library running 1 thread
    when 1 was asked, more than 1 (at most as many: OpenBLAS caps it at the cores it may use
    and its build's maximum) when more was."""
    assert seen["blas_env"] == str(threads)
    if seen["blas"] is not None:
        (got,) = seen["blas"]
        assert got == 1 if threads == 1 else 1 < got <= threads


def test_local_cluster_quiets_dask_on_every_worker_and_splits_the_blas_threads(spawn_env):
    """Worker processes, those of a later scale-up included, run with COMPUTE_CONFIG (and the
    caller's config= over it); those it starts have cores // n BLAS threads and glibc's malloc
    (no MALLOC_TRIM_THRESHOLD_, even where an earlier nanny left it in os.environ); the
    caller's own config and environment are left as they were."""
    import os

    import dask

    keys = sorted(xd.COMPUTE_CONFIG)
    before = {k: dask.config.get(k) for k in keys}
    spawn_env.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what an earlier nanny leaves
    spawn_env.setenv("OPENBLAS_NUM_THREADS", "1")
    env_before = {v: os.environ.get(v) for v in _SPAWN_ENV}
    with xd.local_cluster(2, dashboard_address=":0", config={"distributed.admin.tick.interval": "2s"}) as cluster, \
            distributed.Client(cluster) as client:
        assert {k: dask.config.get(k) for k in keys} == before
        assert {v: os.environ.get(v) for v in _SPAWN_ENV} == env_before
        tick = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler._tick_interval)
        assert tick == pytest.approx(1.0)  # the scheduler, created in this process, has COMPUTE_CONFIG
        first = client.run(_dask_settings, keys)
        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        seen = client.run(_dask_settings, keys)
    assert len(first) == 2 and len(seen) == 3
    for s in seen.values():
        assert s["config"] == {**xd.COMPUTE_CONFIG, "distributed.admin.tick.interval": "2s"}
    for s in first.values():
        _check_blas(s, max(1, xd._cores() // 2))
        assert s["malloc_trim"] is None


def test_local_cluster_blas_threads_reach_the_library_and_its_settings_win(spawn_env):
    """The BLAS reads its thread count when the worker imports NumPy, before the nanny applies
    env=: one worker gets every core's thread (Dask's own pre-spawn default is 1, and an
    earlier nanny leaves that in os.environ, where the nanny looks first). dask_config's
    pre-spawn values and the caller's env= win over such leftovers."""
    import dask

    keys = sorted(xd.COMPUTE_CONFIG)
    spawn_env.setenv("OPENBLAS_NUM_THREADS", "1")
    spawn_env.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with xd.local_cluster(1, dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        (seen,) = client.run(_dask_settings, keys).values()
        (quiet,) = client.run(_has_closing_heartbeat_filter).values()
    _check_blas(seen, xd._cores())
    assert quiet  # dask_setup ran in the worker (Dask's preload)
    trim = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    with xd.local_cluster(1, dask_config={trim: 131072}, env={"OPENBLAS_NUM_THREADS": "1"},
                          dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        (seen,) = client.run(_dask_settings, keys).values()
    assert seen["config"] == {**{k: dask.config.get(k) for k in keys}, trim: 131072}  # Dask's, but for trim
    assert seen["malloc_trim"] == "131072"
    _check_blas(seen, 1)


def _has_closing_heartbeat_filter():
    import logging

    return any(isinstance(f, xd._ClosingHeartbeat) for f in logging.getLogger("distributed.worker").filters)


def test_a_closing_worker_does_not_report_its_last_heartbeat_as_an_error():
    """On a busy machine a worker closing under a heartbeat in flight logged "Failed to
    communicate with scheduler during heartbeat" with three tracebacks (seen in the doc
    example's run beside another test process); a running worker's failure still shows."""
    import logging

    from distributed.core import Status

    class Worker:
        status = Status.running

    worker = Worker()
    f = xd._ClosingHeartbeat(worker)

    def record(msg):
        return logging.LogRecord("distributed.worker", logging.ERROR, __file__, 1, msg, None, None)

    assert f.filter(record("Failed to communicate with scheduler during heartbeat."))
    assert f.filter(record("Unexpected exception during heartbeat. Closing worker."))
    for status in (Status.closing, Status.closing_gracefully, Status.closed):
        worker.status = status
        assert not f.filter(record("Failed to communicate with scheduler during heartbeat."))
        assert f.filter(record("Unexpected exception during heartbeat. Closing worker."))


def test_local_cluster_refuses_what_it_cannot_honour():
    for bad in (1.5, "2", True, None):
        with pytest.raises(TypeError, match=f"n_workers is a number of worker processes, an int; received {bad!r}"):
            xd.local_cluster(bad)
    with pytest.raises(ValueError, match="n_workers must be at least 1; received 0"):
        xd.local_cluster(0)
    with pytest.raises(ValueError, match="received processes=False; use distributed.LocalCluster directly"):
        xd.local_cluster(2, processes=False)
    with pytest.raises(ValueError, match="received asynchronous=True"):
        xd.local_cluster(2, asynchronous=True)
    with pytest.raises(TypeError):
        xd.COMPUTE_CONFIG["distributed.worker.profile.enabled"] = True  # the shared default stays as it is



_UNGUARDED = """
import xdev.dask
from dask.distributed import Client

def start():
    return xdev.dask.local_cluster(1, dashboard_address=":0")

{call}
print("no error")
"""


@pytest.mark.parametrize("call", ["cluster = xdev.dask.local_cluster(1)", "cluster = start()",
                                  "with start() as cluster:\n    pass"])
def test_local_cluster_started_while_a_script_is_imported_says_so_in_one_line(tmp_path, call):
    """Worker processes start by importing the main script again (spawn): at its top level,
    unguarded, local_cluster is refused before any process starts, in one line, instead of
    "Nanny failed to start" under every worker's tracebacks."""
    import subprocess
    import sys

    from child import child_env

    script = tmp_path / "script.py"
    script.write_text(_UNGUARDED.format(call=call))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                       env=child_env(), cwd=tmp_path)
    line = 8  # the line of {call} in _UNGUARDED: the main module's own line, not start()'s
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "no error" not in r.stdout, r.stderr[-3000:]
    assert last == (f"RuntimeError: xdev.dask.local_cluster was called at {script} line {line}, outside an "
                    f"`if __name__ == \"__main__\":` block: Dask's worker processes start by importing the main "
                    f"module again (spawn), and each would run that line too; put the code that starts the "
                    f"cluster under `if __name__ == \"__main__\":` (docs/dask.md)"), r.stderr[-3000:]
    assert "Nanny" not in r.stderr and len(r.stderr.splitlines()) < 15, r.stderr[-3000:]


def test_local_cluster_under_the_main_guard_starts(tmp_path):
    """The same script with its top level under `if __name__ == "__main__":` runs (the check
    raises no false alarm, the way the examples of docs/dask.md are written)."""
    import subprocess
    import sys

    from child import child_env

    script = tmp_path / "script.py"
    script.write_text(_UNGUARDED.format(call='if __name__ == "__main__":\n    with start() as cluster, Client(cluster) as c:\n'
                                             '        print(xdev.dask.matmul(*[__import__("dask.array").array.ones((2, 2))] * 2).sum().compute())'))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                       env=child_env(), cwd=tmp_path)
    assert r.returncode == 0 and "8.0" in r.stdout.split(), r.stdout[-1000:] + r.stderr[-3000:]
