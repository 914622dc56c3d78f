"""The prefetcher and the disk stage under bad sources, bad files and bad arguments (issue 20).

A hang or a crash is run in a child process with a timeout, so that it fails the test
instead of stopping the suite.
"""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest

import xdev
from availability import backend_status
from child import run_child
from xdev._prefetch import MAX_DEPTH, STAGING_SLOTS
from xdev.contract.staging import SlotPool, StagingClosed


def _backends() -> list[str]:
    return ["numpy"] + (["opencl"] if backend_status("opencl").available else [])


# -- a source whose next() blocks ----------------------------------------------------------------
STUCK = textwrap.dedent("""
    import gc, queue, sys, threading, time
    import numpy as np, xdev
    from xdev._prefetch import _Plain
    from xdev._registry import get_device

    dev = get_device(sys.argv[1])
    touched, made = [], []
    make = dev.stager

    class Recording:
        # The device's stager, recording any use after close().
        def __init__(self, inner):
            self.inner, self.closed = inner, False
            made.append(self)
        def upload(self, host):
            if self.closed:
                touched.append("upload after close")
            return self.inner.upload(host)
        def ready(self, token):
            self.inner.ready(token)
        def close(self):
            self.closed = True
            self.inner.close()

    dev.stager = lambda slots: Recording(make(slots) or _Plain(dev))
    for how in ("close", "with", "del", "break"):
        q = queue.Queue()
        def src():
            yield np.ones(4, np.float32)
            while True:
                yield q.get()
        t0 = time.monotonic()
        if how == "close":
            pf = xdev.prefetch(src(), backend=dev.key); next(pf); pf.close()
        elif how == "with":
            with xdev.prefetch(src(), backend=dev.key) as pf:
                next(pf)
        elif how == "del":
            pf = xdev.prefetch(src(), backend=dev.key); next(pf); del pf; gc.collect()
        else:
            for x in xdev.prefetch(src(), backend=dev.key):
                break
        took = time.monotonic() - t0
        assert made[-1].closed, how  # staging buffers freed at once, with the thread still stuck
        q.put(np.ones(4, np.float32))  # the stuck next() returns now: the thread drops the batch and ends
        t1 = time.monotonic()
        while any(t.name.startswith("xdev.prefetch") for t in threading.enumerate()):
            assert time.monotonic() - t1 < 30, "the producer thread did not end after its source returned"
            time.sleep(0.01)
        print(how, f"{took:.3f}")
    print("touched", touched)
""")


@pytest.mark.parametrize("backend", _backends())
def test_close_returns_while_the_source_blocks(backend):
    # Issue 20 item 1: close()/with/del/break joined the producer thread without a timeout.
    r = run_child(STUCK.replace("sys.argv[1]", repr(backend)), timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    took = dict(ln.split() for ln in r.stdout.splitlines() if ln.split()[0] in ("close", "with", "del", "break"))
    assert set(took) == {"close", "with", "del", "break"}, r.stdout
    assert all(float(v) < 5.0 for v in took.values()), took  # promptly: no join on a stuck source
    assert "touched []" in r.stdout  # the stuck producer never used the closed stager


def test_a_consumer_blocked_in_next_stops_when_another_thread_closes():
    import queue
    import threading

    q: queue.Queue = queue.Queue()

    def src():
        while True:
            yield q.get()

    it = xdev.prefetch(src(), backend="numpy")
    got: list = []
    consumer = threading.Thread(target=lambda: got.extend(it), daemon=True)
    consumer.start()
    closer = threading.Thread(target=it.close, daemon=True)  # a hang fails the test, not the suite
    closer.start()
    closer.join(10)
    consumer.join(10)
    q.put(None)
    assert not closer.is_alive(), "close() blocked on the source"
    assert not consumer.is_alive() and got == []


# -- non-regular files ---------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifo_and_directory_are_refused_up_front(tmp_path):
    # Issue 20 items 3 and 16: open() of a FIFO waited for a writer forever, and
    # drop_page_cache raised IsADirectoryError for a directory.
    code = textwrap.dedent(f"""
        import os, numpy as np, xdev
        d = {str(tmp_path)!r}
        fifo = os.path.join(d, "pipe.npy")
        os.mkfifo(fifo)
        try:
            xdev.npy_batches([fifo])
        except ValueError as e:
            print("npy_batches:", e)
        print("drop_page_cache:", xdev.drop_page_cache([fifo]))
        print("directory:", xdev.drop_page_cache([d]))
        # A file replaced by a FIFO between the header and the epoch's read.
        good = os.path.join(d, "good.npy")
        np.save(good, np.ones((2, 3), np.float32))
        src = xdev.npy_batches([good])
        os.remove(good)
        os.mkfifo(good)
        try:
            list(src)
        except ValueError as e:
            print("epoch:", e)
    """)
    r = run_child(code, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    out = dict(ln.split(": ", 1) for ln in r.stdout.splitlines())
    assert "pipe.npy" in out["npy_batches"] and "FIFO" in out["npy_batches"]
    assert "pipe.npy" in out["drop_page_cache"] and "FIFO" in out["drop_page_cache"]
    assert str(tmp_path) in out["directory"] and "directory" in out["directory"]
    assert "good.npy" in out["epoch"] and "FIFO" in out["epoch"]


def test_drop_page_cache_of_a_directory_says_why_not(tmp_path):
    why = xdev.drop_page_cache([tmp_path])
    assert isinstance(why, str) and "a directory, not a regular file" in why and str(tmp_path) in why
    assert xdev._disk.resident_fraction(tmp_path) is None


# -- files that shrink while an epoch reads them ----------------------------------------------------
TRUNCATE = textwrap.dedent("""
    import os, types, numpy, xdev
    from xdev import _disk

    path = PATH
    numpy.save(path, numpy.ones((1024, 1024), numpy.float32))  # 4 MiB
    src = xdev.npy_batches([path])
    real = numpy

    class Np(types.ModuleType):
        # numpy as _disk sees it: the file shrinks when the batch's array is allocated,
        # i.e. after the header was read (and, in a memory-mapping reader, after the map).
        def __getattr__(self, name):
            return getattr(real, name)

        def empty(self, *a, **k):
            os.truncate(path, 4096)
            return real.empty(*a, **k)

    _disk.np = Np("numpy")
    try:
        list(src)
    except ValueError as e:
        print("error:", e)
""")


def test_a_file_truncated_during_the_epoch_is_an_error_not_sigbus(tmp_path):
    # Issue 20 item 5: a file truncated under its memory map killed the process with SIGBUS.
    path = str(tmp_path / "shrinks.npy")
    r = run_child(TRUNCATE.replace("PATH", repr(path)), timeout=60)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "error:" in r.stdout and "shrinks.npy" in r.stdout and "truncated" in r.stdout, r.stdout


def test_a_short_read_is_an_error(tmp_path, monkeypatch):
    # The file shrinks after the size check, during the read: readinto comes back short.
    from xdev import _disk

    path = tmp_path / "short.npy"
    np.save(path, np.ones((64, 64), np.float32))
    src = xdev.npy_batches([path])
    real_fdopen = os.fdopen

    class Shrinking:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def seek(self, pos):
            return self.f.seek(pos)

        def readinto(self, buf):
            os.truncate(path, 1024)
            return self.f.readinto(buf)

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        return Shrinking(f) if k.get("buffering") == 0 else f

    monkeypatch.setattr(_disk.os, "fdopen", fdopen)
    with pytest.raises(ValueError, match=r"short\.npy.*truncated while being read.*now holds 1024"):
        list(src)


@pytest.mark.parametrize("backend", _backends())
def test_concurrent_truncation_never_kills_the_process(tmp_path, backend):
    # No hooks: a thread truncates and rewrites files while epochs read them through prefetch.
    code = textwrap.dedent(f"""
        import os, threading, numpy as np, xdev
        d = {str(tmp_path)!r}
        paths = [os.path.join(d, f"b{{i}}.npy") for i in range(4)]
        x = np.ones((256, 1024), np.float32)
        for p in paths:
            np.save(p, x)
        stop = threading.Event()
        def churn():
            while not stop.is_set():
                for p in paths:
                    os.truncate(p, 4096)
                    np.save(p, x)
        t = threading.Thread(target=churn, daemon=True)
        t.start()
        outcomes = {{}}
        for _ in range(10):
            try:
                src = xdev.npy_batches(paths)
                for b in xdev.prefetch(src, backend={backend!r}):
                    assert b.shape == x.shape
                outcome = "ok"
            except ValueError as e:  # each names its file
                outcome = "error" if d in str(e) else "other: " + str(e)[:300]
            except Exception as e:
                outcome = "other: " + repr(e)[:300]
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        stop.set()
        print(outcomes)
    """)
    r = run_child(code, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-3000:])
    assert "other" not in r.stdout, r.stdout


# -- bad headers -------------------------------------------------------------------------------------
def _with_header(path, text: bytes, data: bytes = b"\0" * 12) -> None:
    text = text + b" " * (-(len(text) + 11) % 64) + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data)


@pytest.mark.parametrize("name,content,why", [
    ("empty.npy", None, r"is empty \(0 bytes\)"),
    ("unclosed.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,", "not a readable .npy array"),
    ("notdict.npy", b"[1, 2, 3]", "not a dict"),
    ("badshape.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (-3,)}", "shape"),
    ("baddescr.npy", b"{'descr': 'nonsense', 'fortran_order': False, 'shape': (3,)}", "not a readable"),
    ("objects.npy", b"{'descr': '|O', 'fortran_order': False, 'shape': (3,)}", "Python objects"),
    ("short.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (30,)}", "truncated"),
    ("huge.npy", b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}" + b" " * 20000, "header claims"),
    ("garbage.npy", b"", "magic string"),
])
def test_bad_files_name_their_path(tmp_path, name, content, why):
    # Issue 20 item 9: a corrupt header raised tokenize.TokenError and a 0-byte file EOFError,
    # neither naming the file.
    p = tmp_path / name
    if content is None:
        p.write_bytes(b"")
    elif name == "garbage.npy":
        p.write_bytes(b"definitely not a .npy file")
    elif name == "huge.npy":
        p.write_bytes(b"\x93NUMPY\x02\x00" + (len(content) + 1).to_bytes(4, "little") + content + b"\n")
    else:
        _with_header(p, content)
    with pytest.raises(ValueError, match=why) as info:
        xdev.npy_batches([p])
    assert str(p) in str(info.value) and "npy_batches" in str(info.value)


def test_missing_file_names_its_path(tmp_path):
    with pytest.raises(ValueError, match="cannot open .*nothere.npy"):
        xdev.npy_batches([tmp_path / "nothere.npy"])


def test_every_npy_version_and_layout_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 4)).astype(np.float32)
    cases = {
        "c.npy": x,
        "f.npy": np.asfortranarray(x),
        "be.npy": x.astype(">f4"),
        "i.npy": np.arange(12, dtype=np.int64).reshape(3, 4),
        "scalar.npy": np.float64(2.5),
        "zero.npy": np.zeros((0, 3), np.float32),
        "rec.npy": np.zeros(3, dtype=[("a", "<f4"), ("b", "<i2")]),
    }
    for name, a in cases.items():
        np.save(tmp_path / name, a)
    v3 = tmp_path / "v3.npy"
    with open(v3, "wb") as f:
        np.lib.format.write_array(f, x, version=(3, 0))
    for name, a in [*cases.items(), ("v3.npy", x)]:
        (got,) = list(xdev.npy_batches([tmp_path / name]))
        assert got.dtype == np.asarray(a).dtype and got.shape == np.shape(a), name
        np.testing.assert_array_equal(got, a)
    with pytest.raises(ValueError, match="Fortran order"):
        xdev.npy_batches([tmp_path / "f.npy"], batch_size=2)
    split = list(xdev.npy_batches([tmp_path / "be.npy"], batch_size=2))
    np.testing.assert_array_equal(np.concatenate(split), x)


# -- depth ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 10**8, 2**62])
def test_depth_is_bounded_with_a_clear_error(depth):
    # Issue 20 item 11: 2**62 raised MemoryError with an empty message on OpenCL.
    with pytest.raises(ValueError, match=f"from 1 to {MAX_DEPTH}.*received {depth}"):
        xdev.prefetch([np.ones(2, np.float32)], depth=depth)


def test_the_largest_depth_allocates_lazily(device):
    xs = [np.full((4, 4), i, np.float32) for i in range(3)]
    with xdev.prefetch(xs, depth=MAX_DEPTH, backend=device.key) as it:
        got = [b.numpy() for b in it]
        pool = getattr(it._state.stager, "pool", None)
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(g, x)
    if pool is not None:  # devices with staging buffers: a few, whatever the depth
        assert 1 <= pool.allocated <= STAGING_SLOTS


def test_slot_pool_allocates_on_first_use_and_refuses_after_close():
    made = []

    def alloc(n):
        made.append(n)
        return np.empty(n, np.uint8)

    pool = SlotPool(10**8, alloc, lambda ev: None)
    assert pool.allocated == 0 and made == []
    a = pool.take(100)
    b = pool.take(50)
    assert pool.allocated == 2 and made == [100, 50]
    pool.give_back(b)
    c = pool.take(40)  # the idle slot that fits, not a new one
    assert c is b and pool.allocated == 2
    pool.copying(a, "event")
    pool.give_back(c)
    pool.close()
    with pytest.raises(StagingClosed):
        pool.take(10)


def test_slot_pool_reuses_the_oldest_copy_when_full():
    waited = []
    pool = SlotPool(2, lambda n: np.empty(n, np.uint8), waited.append)
    s1, s2 = pool.take(8), pool.take(8)
    pool.copying(s1, "e1")
    pool.copying(s2, "e2")
    assert pool.take(8) is s1 and waited == ["e1"]  # waited for its copy, then lent again


def test_a_lent_slot_survives_close_until_given_back():
    freed = []
    pool = SlotPool(2, lambda n: np.empty(n, np.uint8), lambda ev: None, freed.append)
    lent = pool.take(16)
    idle = pool.take(16)
    pool.give_back(idle)
    pool.close()
    assert len(freed) == 1 and freed[0] is not lent.buf  # the holder may still be writing into it
    lent.view((4,), np.float32)[:] = 1.0
    buf = lent.buf
    pool.give_back(lent)
    assert freed[-1] is buf and lent.buf is None


# -- byte order ---------------------------------------------------------------------------------------
def test_big_endian_batches_are_uploaded_in_native_order(device, tmp_path):
    # Issue 20 item 13: a '>f4' leaf passed through as a host ndarray.
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5
    be = x.astype(">f4")
    (b,) = list(xdev.prefetch([be], backend=device.key))
    assert isinstance(b, xdev.Array) and b.dtype == np.float32
    np.testing.assert_array_equal(b.numpy(), x)
    ((p, label),) = list(xdev.prefetch([(be, "label")], backend=device.key))
    assert isinstance(p, xdev.Array) and label == "label"
    np.testing.assert_array_equal(p.numpy(), x)
    # From a big-endian file: read into the staging buffer, swapped there.
    np.save(tmp_path / "be.npy", be)
    got = [b.numpy() for b in xdev.prefetch(xdev.npy_batches([tmp_path / "be.npy"], batch_size=1),
                                            backend=device.key)]
    np.testing.assert_array_equal(np.concatenate(got), x)


# -- CPU OpenCL memory: the stager's buffers are the process's memory too ---------------------------
def test_opencl_staging_checks_host_memory(monkeypatch, tmp_path):
    # From faults' review: the stager made its device and staging buffers directly, past the
    # check a CPU device makes before PoCL (which aborts when the process's memory runs out).
    from availability import require

    dev = require("opencl")
    if dev.host_memory is None:
        pytest.skip(f"{dev.key} is a GPU: its memory is not the process's")
    asked: list[int] = []

    class Limit:
        def __init__(self, most: int) -> None:
            self.most = most

        def check(self, nbytes: int, free_held) -> None:
            asked.append(nbytes)
            if nbytes > self.most:
                raise MemoryError(f"test limit: cannot allocate {nbytes:,} bytes")

    x = np.ones((256, 1024), np.float32)  # 1 MiB
    monkeypatch.setattr(dev, "host_memory", Limit(1 << 30))
    (b,) = list(xdev.prefetch([x], backend=dev.key))
    np.testing.assert_array_equal(b.numpy(), x)
    assert asked.count(x.nbytes) == 2, asked  # the staging buffer and the device buffer
    monkeypatch.setattr(dev, "host_memory", Limit(x.nbytes // 2))
    with pytest.raises(MemoryError, match="cannot allocate 1,048,576 bytes"):
        list(xdev.prefetch([x], backend=dev.key))
    np.save(tmp_path / "b.npy", x)  # the readers' staging buffer is refused too: same error, no crash
    with pytest.raises(MemoryError, match="cannot allocate 1,048,576 bytes"):
        list(xdev.prefetch(xdev.npy_batches([tmp_path / "b.npy"]), backend=dev.key))


# -- fork() ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() on this OS")
@pytest.mark.parametrize("backend", _backends())
def test_a_prefetch_from_before_fork_refuses_in_the_child(backend):
    # From faults' review: the child has no producer thread, so next() waited forever; and
    # closing it there must not touch the parent's staging buffers or driver.
    code = textwrap.dedent(f"""
        import os, sys, numpy as np, xdev
        it = xdev.prefetch([np.full(4, i, np.float32) for i in range(6)], backend={backend!r})
        first = next(it).numpy()
        pid = os.fork()
        if pid == 0:
            try:
                next(it)
                print("child: no error", flush=True)
            except RuntimeError as e:
                print("child:", e, flush=True)
            it.close()
            del it
            import gc; gc.collect()
            print("child: closed", flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        rest = [float(b.numpy()[0]) for b in it]  # the parent's pipeline is untouched
        print("parent:", float(first[0]), rest, flush=True)
    """)
    r = run_child(code, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "child: no error" not in r.stdout
    assert "fork" in r.stdout and "in the process that created it" in r.stdout, r.stdout
    assert "child: closed" in r.stdout
    assert "parent: 0.0 [1.0, 2.0, 3.0, 4.0, 5.0]" in r.stdout, r.stdout
