"""xdev.prefetch, xdev.npy_batches and downloads into caller memory, on every available backend."""
from __future__ import annotations

import gc
import threading
import time
import traceback
from collections import namedtuple

import numpy as np
import pytest

import xdev
from stagers import SpyStager
from xdev._disk import resident_fraction

Pair = namedtuple("Pair", "x y")


def _batches(n: int, shape=(2, 3, 9, 7), seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


def _wait_for(cond, timeout=10.0) -> bool:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.005)
    return cond()


def _settle(n0: int) -> int:
    """Thread count once finished threads have gone (they are joined, but give the OS a moment)."""
    _wait_for(lambda: threading.active_count() <= n0, timeout=5.0)
    return threading.active_count()


def test_order_and_values_equal_the_serial_path(device):
    xs = _batches(7)
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32)
    serial = [xdev.conv2d(xdev.asarray(x, backend=device.key), w, padding=1).numpy() for x in xs]
    got = []
    with xdev.prefetch(xs, depth=2, backend=device.key) as it:
        assert it.device == device.key
        for xb in it:
            assert isinstance(xb, xdev.Array) and xb.device == device.key
            got.append(xdev.conv2d(xb, w, padding=1).numpy())
    assert len(got) == len(serial)
    for a, b in zip(got, serial):
        np.testing.assert_array_equal(a, b)  # same kernels on the same data: bit-identical


def test_tuples_dicts_and_passthrough_leaves(device):
    xs = _batches(4)
    src = [{"x": x, "label": i, "pair": Pair(x * 2, np.arange(3))} for i, x in enumerate(xs)]
    out = list(xdev.prefetch(iter(src), depth=3, backend=device.key))
    assert [b["label"] for b in out] == [0, 1, 2, 3]
    for b, x in zip(out, xs):
        assert isinstance(b["pair"], Pair)
        np.testing.assert_array_equal(b["x"].numpy(), x)
        np.testing.assert_array_equal(b["pair"].x.numpy(), x * 2)
        assert isinstance(b["pair"].y, np.ndarray) and b["pair"].y.dtype.kind == "i"  # not uploaded
    # Plain tuples and lists, a zero-size leaf, float64 where the device can do it.
    dt = np.float64 if device.backend != "opencl" or device.has_fp64 else np.float32
    a, b = np.ones((0, 3), dt), np.full((2, 2), 3.0, dt)
    ((za, zb),) = [t for t in xdev.prefetch([(a, [b])], backend=device.key)]
    assert za.shape == (0, 3) and zb[0].numpy().tolist() == [[3.0, 3.0], [3.0, 3.0]]


def _boom_source():
    yield np.zeros((2, 2), np.float32)
    raise KeyError("producer failed on batch 1")


def test_producer_exception_reaches_consumer_with_traceback(device):
    n0 = threading.active_count()
    it = xdev.prefetch(_boom_source(), backend=device.key)
    first = next(it)
    assert first.shape == (2, 2)
    with pytest.raises(KeyError, match="producer failed") as info:
        next(it)
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "_boom_source" in frames  # the producer's own frame, not only the consumer's
    with pytest.raises(StopIteration):
        next(it)  # closed after the failure
    assert _settle(n0) == n0


@pytest.mark.parametrize("how", ["break", "close", "gc", "with"])
def test_early_close_leaves_no_thread_and_closes_the_source(device, how):
    n0 = threading.active_count()
    state = {"drawn": 0, "finalized": False}

    def source():
        try:
            for x in _batches(50, shape=(2, 2)):
                state["drawn"] += 1
                yield x
        finally:
            state["finalized"] = True

    if how == "break":
        for i, _ in enumerate(xdev.prefetch(source(), depth=2, backend=device.key)):
            if i == 2:
                break
    elif how == "close":
        it = xdev.prefetch(source(), depth=2, backend=device.key)
        next(it)
        it.close()
        it.close()  # idempotent
        with pytest.raises(StopIteration):
            next(it)
    elif how == "gc":
        it = xdev.prefetch(source(), depth=2, backend=device.key)
        next(it)
        del it
        gc.collect()
    else:
        with xdev.prefetch(source(), depth=2, backend=device.key) as it:
            next(it)
    assert _settle(n0) == n0
    assert state["finalized"], "the generator source was not closed"
    assert state["drawn"] < 50


@pytest.mark.parametrize("depth", [1, 3])
def test_memory_bounded_by_depth(device, depth):
    drawn = [0]

    def source():
        for x in _batches(20, shape=(2, 2)):
            drawn[0] += 1
            yield x

    it = xdev.prefetch(source(), depth=depth, backend=device.key)
    held = []
    for k in range(1, 4):
        held.append(next(it))
        # The thread runs ahead to exactly `depth` batches beyond those taken, then waits.
        assert _wait_for(lambda: drawn[0] >= k + depth), (drawn[0], k, depth)
        time.sleep(0.1)
        assert drawn[0] == k + depth, (drawn[0], k, depth)
    it.close()


def test_overlaps_producer_with_consumer():
    # Sleeps use no CPU, so this holds on a loaded machine: serial takes 8 * (50 + 50) ms,
    # overlapped about 9 * 50 ms.
    def slow():
        for x in _batches(8, shape=(2, 2)):
            time.sleep(0.05)
            yield x

    t0 = time.perf_counter()
    for _ in xdev.prefetch(slow(), depth=2, backend="numpy"):
        time.sleep(0.05)
    elapsed = time.perf_counter() - t0
    assert elapsed < 0.8 * 8 * 0.1, elapsed


def test_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        xdev.prefetch([], depth=0)
    with pytest.raises(ValueError, match="depth"):
        xdev.prefetch([], depth=True)
    with pytest.raises(TypeError, match="iterable of batches"):
        xdev.prefetch(np.zeros((3, 2)))
    with pytest.raises(TypeError, match="iterable"):
        xdev.prefetch(5)
    with pytest.raises(ValueError, match="unknown backend"):
        xdev.prefetch([], backend="nope")
    assert list(xdev.prefetch([])) == []


def test_upload_error_reaches_consumer():
    dev = xdev._registry.get_device("numpy")
    it = xdev.prefetch([np.zeros(2, np.float32), np.zeros(2, np.float16).view([("a", "f2")])], backend=dev.key)
    # A structured array is not a float leaf: passed through, not an error.
    assert next(it).shape == (2,)
    assert next(it).dtype.names == ("a",)


# -- the disk source --------------------------------------------------------------------------
def _files(tmp_path, n=5, shape=(3, 4, 5)):
    xs = _batches(n, shape=shape, seed=3)
    paths = []
    for i, x in enumerate(xs):
        p = tmp_path / f"b{i}.npy"
        np.save(p, x)
        paths.append(p)
    return xs, paths


def test_npy_batches_order_split_and_epochs(tmp_path):
    xs, paths = _files(tmp_path)
    src = xdev.npy_batches(paths, workers=3)
    assert len(src) == 5
    for _ in range(2):  # two epochs
        got = list(src)
        assert all(isinstance(g, np.ndarray) and not isinstance(g, np.memmap) for g in got)
        for g, x in zip(got, xs):
            np.testing.assert_array_equal(g, x)
    split = list(xdev.npy_batches(paths[:2], batch_size=2))
    assert [s.shape[0] for s in split] == [2, 1, 2, 1]
    np.testing.assert_array_equal(np.concatenate(split), np.concatenate(xs[:2]))


def test_npy_batches_through_prefetch_and_early_close(tmp_path, device):
    xs, paths = _files(tmp_path, n=6)
    n0 = threading.active_count()
    got = [b.numpy() for b in xdev.prefetch(xdev.npy_batches(paths), depth=2, backend=device.key)]
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(g, x)
    for i, _ in enumerate(xdev.prefetch(xdev.npy_batches(paths, workers=2), backend=device.key)):
        if i == 1:
            break
    assert _settle(n0) == n0  # the prefetch thread and the reader pool are gone


def test_npy_batches_break_stops_readers(tmp_path):
    _, paths = _files(tmp_path, n=8)
    n0 = threading.active_count()
    for i, _ in enumerate(xdev.npy_batches(paths, workers=3)):
        if i == 0:
            assert threading.active_count() > n0  # the readers run beside the caller
            break
    assert _settle(n0) == n0


def test_npy_batches_bad_input(tmp_path):
    bad = tmp_path / "x.npy"
    bad.write_bytes(b"not an npy file")
    with pytest.raises(ValueError, match="x.npy' is not a readable .npy array"):
        xdev.npy_batches([bad])
    npz = tmp_path / "x.npz"
    np.savez(npz, a=np.ones(3))
    with pytest.raises(ValueError, match=r"\.npz archive, not a \.npy array"):
        xdev.npy_batches([npz])
    with pytest.raises(ValueError, match="workers"):
        xdev.npy_batches([], workers=0)
    with pytest.raises(ValueError, match="batch_size"):
        xdev.npy_batches([], batch_size=0)


def test_drop_page_cache(tmp_path):
    _, paths = _files(tmp_path, n=1, shape=(64, 1024))
    why = xdev.drop_page_cache(paths)
    before = resident_fraction(paths[0])
    if why is not None:
        pytest.skip(f"this OS cannot drop the file from the page cache: {why}")
    assert before is None or before <= 0.5
    next(iter(xdev.npy_batches(paths)))
    after = resident_fraction(paths[0])
    assert after is None or after == 1.0  # the read brought it back
    assert "cannot open" in xdev.drop_page_cache([tmp_path / "missing.npy"])


# -- downloads into caller memory -------------------------------------------------------------
def test_numpy_out(device):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    a = xdev.asarray(x, backend=device.key)
    out = np.empty((4, 6), np.float32)
    assert a.numpy(out=out) is out
    np.testing.assert_array_equal(out, x)
    out_t = np.empty((6, 4), np.float32)
    np.testing.assert_array_equal(a.T.numpy(out=out_t), x.T)  # a strided view
    pinned = device.pinned_empty((4, 6), np.dtype(np.float32))
    if pinned is not None:
        np.testing.assert_array_equal(a.numpy(out=pinned), x)
    with pytest.raises(ValueError, match=r"shape \(4, 6\) and dtype float32"):
        a.numpy(out=np.empty((6, 4), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        a.numpy(out=np.empty((4, 6), np.float64))
    ro = np.empty((4, 6), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        a.numpy(out=ro)


def test_interpreter_exit_does_not_wait_for_a_blocked_source():
    # A source blocked forever (a queue, a socket) must not hang the process at exit: the
    # producer is a daemon thread and the finalizer does not join it then.
    from child import run_child

    code = ("import threading, numpy as np, xdev\n"
            "def src():\n"
            "    yield np.ones((2, 2), np.float32)\n"
            "    threading.Event().wait()\n"
            "it = xdev.prefetch(src(), backend='numpy')\n"
            "print(next(it).shape)\n")
    r = run_child(code, timeout=60)
    assert r.returncode == 0 and "(2, 2)" in r.stdout, r.stderr[-2000:]


def test_npy_reads_land_in_staging_buffers(tmp_path, device, monkeypatch):
    """With an npy_batches source the readers read into the stager's buffers and the upload
    is upload_staged (no pageable copy first); integer files pass through as host arrays."""
    xs, paths = _files(tmp_path, n=5)
    np.save(tmp_path / "labels.npy", np.arange(6))
    calls: list[str] = []
    make = device.stager
    monkeypatch.setattr(device, "stager", lambda slots: SpyStager(make(slots), ("stage", "upload_staged", "upload"),
                                                                  calls))
    got = list(xdev.prefetch(xdev.npy_batches([*paths, tmp_path / "labels.npy"], workers=3), backend=device.key))
    for g, x in zip(got, xs):
        assert isinstance(g, xdev.Array) and g.device == device.key
        np.testing.assert_array_equal(g.numpy(), x)
    assert isinstance(got[-1], np.ndarray) and got[-1].tolist() == list(range(6))
    assert sorted(calls) == ["stage"] * 5 + ["upload_staged"] * 5, calls
