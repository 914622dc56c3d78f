"""The CUDA backend's prefetch staging (pinned slots, copy stream, events, chunked downloads),
with a stand-in for CuPy: the logic runs without a GPU (the GPU run is bench/gpu_pipeline.sh)."""
from __future__ import annotations

import numpy as np
import pytest

import xdev
from strategies import values


class _FakeEvent:
    def synchronize(self) -> None:
        pass


class _FakeStream:
    def __init__(self, *a, **k) -> None:
        self.waits = 0

    def record(self) -> _FakeEvent:
        return _FakeEvent()

    def wait_event(self, ev) -> None:
        self.waits += 1

    def synchronize(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *a) -> None:
        pass


class _FakePtr:
    """A device pointer into a host uint8 array: copies are memmoves."""

    def __init__(self, mem: np.ndarray, off: int = 0) -> None:
        self.mem, self.off = mem, off

    def __add__(self, n: int) -> "_FakePtr":
        return _FakePtr(self.mem, self.off + n)

    def copy_to_host_async(self, dst, n, stream=None) -> None:
        import ctypes
        ctypes.memmove(dst.value, self.mem.ctypes.data + self.off, n)

    def copy_from_host_async(self, src, n, stream=None) -> None:
        import ctypes
        ctypes.memmove(self.mem.ctypes.data + self.off, src.value, n)


class _FakeDeviceArray:
    def __init__(self, host: np.ndarray) -> None:
        self.host = np.ascontiguousarray(host)
        self.shape, self.dtype, self.nbytes = self.host.shape, self.host.dtype, self.host.nbytes
        self.data = _FakePtr(self.host.reshape(-1).view(np.uint8))


@pytest.fixture
def fake_cuda_staging(monkeypatch):
    import contextlib
    import importlib.util
    import pathlib
    import sys
    import types

    stream = _FakeStream()
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(Stream=_FakeStream, Event=_FakeEvent, get_current_stream=lambda: stream)
    cupy.empty = lambda shape, dtype: _FakeDeviceArray(np.zeros(shape, dtype))
    cupyx = types.ModuleType("cupyx")
    cupyx.empty_pinned = lambda shape, dtype: np.empty(shape, dtype)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupyx", cupyx)
    path = pathlib.Path(xdev.__file__).parent.parent / "backends" / "cuda" / "staging.py"
    if not path.exists():
        path = pathlib.Path(xdev.__file__).parent / "backends" / "cuda" / "staging.py"
    spec = importlib.util.spec_from_file_location("_xdev_fake_cuda_staging", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    dev = types.SimpleNamespace(index=0, _cp=contextlib.nullcontext(),
                                _guard=lambda what: contextlib.nullcontext())
    return mod, dev, stream


def test_cuda_chunked_download_logic(fake_cuda_staging, monkeypatch):
    mod, dev, _ = fake_cuda_staging
    monkeypatch.setattr(mod, "CHUNK_BYTES", 4096)
    for n in (1, 1024, 1025, 2048, 2500):  # below, at and across chunk boundaries (floats: 4 B)
        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        out = np.empty_like(x)
        mod.download_staged(dev, _FakeDeviceArray(x), out)
        np.testing.assert_array_equal(out, x)
    assert len(mod._chunks[0].bufs) == 2 and all(b.nbytes == 4096 for b in mod._chunks[0].bufs)


def test_cuda_stager_logic(fake_cuda_staging, monkeypatch):
    mod, dev, compute = fake_cuda_staging
    monkeypatch.setattr(mod, "CHUNK_BYTES", 16)  # 60-byte batches: 4 chunks, the last partial
    st = mod.CudaStager(dev, 3)
    xs = [values(i, (3, 5), np.float32) for i in range(6)] + [values(6, (5, 4), np.float32).T]  # and a non-contiguous one
    outs = []
    for x in xs:
        d, ev = st.upload(x)
        st.ready(ev)
        outs.append(d)
    for d, x in zip(outs, xs):
        np.testing.assert_array_equal(d.host, x)  # each batch its own device array
    assert st.pool.allocated == 3  # the pinned slots are reused
    assert st.stream.waits == 7 and compute.waits == 7  # copy after compute's frees; compute after copy
    empty, ev = st.upload(np.zeros((0, 4), np.float32))
    assert ev is None and empty.shape == (0, 4)
    st.close()
    assert st.pool.closed and not st.pool._idle and not st.pool._busy


def test_cuda_stager_falls_back_when_pinned_memory_runs_out(fake_cuda_staging, monkeypatch):
    mod, dev, _ = fake_cuda_staging

    def refuse(shape, dtype):
        raise MemoryError("page-locked memory exhausted")

    monkeypatch.setattr(mod.cupyx, "empty_pinned", refuse)
    st = mod.CudaStager(dev, 2)
    x = values(0, (4, 4), np.float32)
    d, ev = st.upload(x)
    np.testing.assert_array_equal(d.host, x)
    assert ev is not None and "page-locked memory exhausted" in st.pinned_error


def test_cuda_stager_allocates_lazily(fake_cuda_staging):
    mod, dev, _ = fake_cuda_staging
    st = mod.CudaStager(dev, 10**8)  # issue 20 item 11: nothing in proportion to the slot count
    assert st.pool.allocated == 0
    d, _ = st.upload(values(0, (2, 2), np.float32))
    assert st.pool.allocated == 1
    st.close()


def _npy_files(tmp_path):
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((3, 4, 5)).astype(np.float32) for _ in range(5)]
    paths = []
    for i, x in enumerate(xs):
        p = tmp_path / f"b{i}.npy"
        np.save(p, x.astype(">f4") if i == 2 else x)  # one big-endian file: swapped in the pinned buffer
        paths.append(p)
    return xs, paths


def test_cuda_reads_go_straight_into_pinned_buffers(fake_cuda_staging, tmp_path):
    """npy_batches' readers read each batch into a pinned slot; upload_staged is one DMA from it."""
    import types

    from xdev._disk import Staged, npy_batches
    from xdev._prefetch import _Staging

    mod, dev, compute = fake_cuda_staging
    xs, paths = _npy_files(tmp_path)
    src = npy_batches(paths, workers=2)
    st = mod.CudaStager(dev, src.workers + 2)
    staging = _Staging(types.SimpleNamespace(check_dtype=lambda dt: None), st)
    got = []
    for item in src._batches(staging):
        assert isinstance(item, Staged)
        assert item.slot.buf is not None and item.slot.host.ctypes.data == item.slot.buf.ctypes.data
        d, ev = st.upload_staged(item.slot)
        st.ready(ev)
        got.append(d.host.copy())
    for g, x in zip(got, xs):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, x)
    assert 1 <= st.pool.allocated <= src.workers + 2
    st.close()


def test_cuda_reads_fall_back_to_new_arrays_without_pinned_memory(fake_cuda_staging, tmp_path, monkeypatch):
    import types

    from xdev._disk import Staged, npy_batches
    from xdev._prefetch import _Staging

    mod, dev, _ = fake_cuda_staging

    def refuse(shape, dtype):
        raise MemoryError("page-locked memory exhausted")

    monkeypatch.setattr(mod.cupyx, "empty_pinned", refuse)
    xs, paths = _npy_files(tmp_path)
    st = mod.CudaStager(dev, 4)
    staging = _Staging(types.SimpleNamespace(check_dtype=lambda dt: None), st)
    got = list(npy_batches(paths)._batches(staging))
    assert not any(isinstance(g, Staged) for g in got) and "page-locked" in st.pinned_error
    for g, x in zip(got, xs):
        np.testing.assert_array_equal(g, x)  # read into new arrays: the ordinary upload takes them


def test_cuda_staged_slot_survives_close_while_a_reader_holds_it(fake_cuda_staging):
    mod, dev, _ = fake_cuda_staging
    st = mod.CudaStager(dev, 3)
    slot = st.stage((4, 4), np.dtype(np.float32))
    st.close()  # the consumer stopped while a reader was still reading into `slot`
    slot.host[:] = 1.0  # its memory is still the reader's
    st.give_back(slot)
    assert slot.buf is None
    with pytest.raises(RuntimeError, match="closed"):
        st.stage((4, 4), np.dtype(np.float32))
