"""The CUDA device's matmul (backends/cuda/gemm.py, cublas.py) without a GPU: device.py loaded on a
fake CuPy whose cuBLAS computes through the pointers it is given; on a GPU, CuPy's global state
left alone."""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
import types
from types import SimpleNamespace

import numpy as np
import pytest

import xdev
from cuda_fakes import FA, as_fa, raw_view
from cuda_sources import CUDA_DIR
from reference import matmul_ref
from strategies import values
from tolerance import assert_agrees


# ==== device.py's matmul on a fake CuPy and a fake cuBLAS that computes through the pointers =========

_CUDA_DT = {0: np.float32, 1: np.float64, 2: np.float16}
_COMPUTE_SCALAR = {68: np.float32, 77: np.float32, 70: np.float64}


class FakeCublas(types.ModuleType):
    """cublasGemmEx / cublasGemmStridedBatchedEx as CuPy's binding calls them, computed in float64."""

    def __init__(self):
        super().__init__("cupy_backends.cuda.libs.cublas")
        self.calls, self.modes, self.streams = [], {}, []
        self.current_stream = 0  # CuPy's current stream, as the fake cupy reports it
        self.failures = 0  # the next this many GEMM calls raise, as a failing cuBLAS call does

    def create(self):
        return 77

    def setMathMode(self, h, mode):
        self.modes[h] = mode

    def setStream(self, h, stream):
        self.streams.append((h, stream))

    def gemmEx(self, h, ta, tb, m, n, k, alpha, A, At, lda, B, Bt, ldb, beta, C, Ct, ldc, compute, algo):
        self.gemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, At, lda, 0, B, Bt, ldb, 0, beta, C, Ct, ldc, 0, 1,
                                  compute, algo)

    def gemmStridedBatchedEx(self, h, ta, tb, m, n, k, alpha, A, At, lda, sA, B, Bt, ldb, sB, beta, C, Ct, ldc, sC,
                             batch, compute, algo):
        assert At == Bt == Ct and algo == -1
        if self.failures:
            self.failures -= 1
            raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
        dt = np.dtype(_CUDA_DT[At])
        sdt = np.dtype(_COMPUTE_SCALAR[compute])
        self.calls.append(dict(dtype=dt.name, compute=compute, batch=batch))
        al = raw_view(alpha, (1,), (1,), sdt)[0]
        be = raw_view(beta, (1,), (1,), sdt)[0]
        isz = dt.itemsize
        for i in range(batch):
            a = raw_view(A + i * sA * isz, (m, k) if ta == 0 else (k, m), (1, lda), dt)
            b = raw_view(B + i * sB * isz, (k, n) if tb == 0 else (n, k), (1, ldb), dt)
            c = raw_view(C + i * sC * isz, (m, n), (1, ldc), dt)
            a64 = (a if ta == 0 else a.T).astype(np.float64)
            b64 = (b if tb == 0 else b.T).astype(np.float64)
            c[...] = (al * (a64 @ b64) + (be * c if be else 0)).astype(dt)


@pytest.fixture
def fake_device(monkeypatch):
    cp = types.ModuleType("cupy")
    cp.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(FA)
    cp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FA)
    cp.matmul = lambda a, b: np.matmul(a, b).view(FA)  # CuPy's own kernels (integers and bool)

    class Err(Exception):
        pass

    cp.cuda = SimpleNamespace(memory=SimpleNamespace(OutOfMemoryError=Err), runtime=SimpleNamespace(CUDARuntimeError=Err),
                              get_current_stream=lambda: SimpleNamespace(ptr=cublas.current_stream))
    cublas = FakeCublas()
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    for name, m in (("cupy", cp), ("cupyx", types.ModuleType("cupyx")),
                    ("cupy_backends", types.ModuleType("cupy_backends")),
                    ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                    ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", cublas)):
        monkeypatch.setitem(sys.modules, name, m)
    root = types.ModuleType("xdev_fake_root")
    root.__path__ = [str(CUDA_DIR.parent)]
    pkg = types.ModuleType("xdev_fake_root.cuda")
    pkg.__path__ = [str(CUDA_DIR)]
    monkeypatch.setitem(sys.modules, "xdev_fake_root", root)
    monkeypatch.setitem(sys.modules, "xdev_fake_root.cuda", pkg)
    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    spec = importlib.util.spec_from_file_location("xdev_fake_root.cuda.device", CUDA_DIR / "device.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    dev = object.__new__(mod.CudaDevice)
    dev.index, dev.cc, dev.key, dev.name = 0, (9, 0), "cuda:0", "Fake H100"
    dev._cp, dev._tls, dev._gemm_plans, dev._matmul_calls = contextlib.nullcontext(), threading.local(), {}, {}
    yield dev, cublas
    for name in [n for n in sys.modules if n.startswith("xdev_fake_root.")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("ashape,bshape", [((7,), (7,)), ((1, 9), (9, 1)), ((5, 7), (7,)), ((7,), (7, 3)),
                                           ((3, 5, 7), (7, 2)), ((2, 1, 4, 3), (5, 3, 6)), ((4, 0), (0, 3)),
                                           ((0, 4), (4, 3)), ((2, 3, 4), (2, 4, 5))])
def test_device_matmul_has_numpy_semantics_on_cublas(fake_device, ashape, bshape):
    dev, cublas = fake_device
    for i, dt in enumerate([np.float16, np.float32, np.float64]):
        a = values(10 + i, ashape, dt)
        b = values(20 + i, bshape, dt)
        views = [(a, b)]
        if a.ndim >= 2 and b.ndim >= 2:  # transposed-in-memory operands reach cuBLAS without a copy
            views.append((np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2),
                          np.ascontiguousarray(b.swapaxes(-1, -2)).swapaxes(-1, -2)))
        for va, vb in views:
            n0 = len(cublas.calls)
            got = dev.matmul(as_fa(va), as_fa(vb))
            n1 = len(cublas.calls)
            again = dev.matmul(as_fa(va), as_fa(vb))  # the remembered call, where there is one
            assert again.shape == got.shape and again.dtype == got.dtype and np.array_equal(again, got)
            assert cublas.calls[n1:] == cublas.calls[n0:n1]  # the same cuBLAS calls
            ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
            assert got.shape == ref.shape and got.dtype == dt
            if ref.size:
                r, r_abs = matmul_ref(a, b)
                acc = np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
                assert_agrees(np.asarray(got), r, r_abs, max(a.shape[-1], 1), acc, np.dtype(dt), f"{ashape}@{bshape}")
    computes = {c["dtype"]: c["compute"] for c in cublas.calls}
    if cublas.calls:
        # float16 accumulates in FP32, float32 is plain FP32 (no TF32), float64 in FP64; xdev's own handle.
        assert computes == {"float16": 68, "float32": 68, "float64": 70}
        assert cublas.modes == {77: 0}


def test_device_matmul_tf32_is_a_compute_type_in_the_call(fake_device, monkeypatch):
    dev, cublas = fake_device
    a = values(1, (8, 8), np.float32)
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")
    dev.matmul(as_fa(a), as_fa(a))
    dev.cc = (7, 5)  # no TF32 tensor cores: stays FP32
    dev.matmul(as_fa(a), as_fa(a))
    monkeypatch.delenv("XDEV_CUDA_TF32")
    dev.cc = (9, 0)
    dev.matmul(as_fa(a), as_fa(a))
    assert [c["compute"] for c in cublas.calls] == [77, 68, 68]


def test_device_conv_gemm_blocks_go_through_the_same_cublas_path(fake_device):
    dev, cublas = fake_device
    G, Og, K, nb, L, HW = 2, 3, 5, 2, 4, 7
    w = values(1, (G, Og, K), np.float32)
    cols = values(2, (nb, G, K, L), np.float32)
    y = as_fa(np.full((nb, G, Og, HW), np.nan, np.float32))
    dev.gemm_into(as_fa(w), as_fa(cols), out=y[:, :, :, 1 : 1 + L])
    np.testing.assert_allclose(y[:, :, :, 1 : 1 + L], np.matmul(w, cols), rtol=1e-5)
    assert np.isnan(y[:, :, :, 0]).all() and np.isnan(y[:, :, :, 1 + L :]).all()
    assert [c["batch"] for c in cublas.calls] == [G] * nb


def test_cublas_runs_on_cupys_current_stream(fake_device):
    # The handle is bound to CuPy's current stream before a GEMM, and again only on a change.
    dev, cublas = fake_device
    a, b = as_fa(values(1, (4, 3), np.float32)), as_fa(values(2, (3, 5), np.float32))
    dev.matmul(a, b)
    dev.matmul(a, b)
    cublas.current_stream = 1234
    dev.matmul(a, b)
    assert cublas.streams == [(77, 0), (77, 1234)]


# ==== on a GPU (skipped with the reason elsewhere) ===================================================

@pytest.fixture(scope="module")
def cuda():
    from availability import require

    return require("cuda")


def test_gpu_matmul_leaves_cupys_global_state_alone(cuda, monkeypatch):
    import cupy
    from cupy._core import _routines_linalg as rl
    from cupy_backends.cuda.libs import cublas

    a = xdev.asarray(values(1, (64, 64), np.float32), backend="cuda")
    before = (rl.get_compute_type(np.dtype(np.float32)), cublas.getMathMode(cupy.cuda.device.get_cublas_handle()))
    for tf32 in ("1", "0"):
        monkeypatch.setenv("XDEV_CUDA_TF32", tf32)
        xdev.matmul(a, a)
        xdev.matmul(a.reshape(1, 64, 64), a)
        xdev.conv2d(values(2, (1, 4, 8, 8), np.float32), values(3, (4, 4, 3, 3), np.float32), algorithm="gemm",
                    backend="cuda")
        after = (rl.get_compute_type(np.dtype(np.float32)), cublas.getMathMode(cupy.cuda.device.get_cublas_handle()))
        assert after == before


@pytest.mark.parametrize("dt", [np.int8, np.uint8, np.int16, np.int32, np.uint32, np.int64, np.uint64, np.bool_],
                         ids=lambda t: np.dtype(t).name)
def test_device_matmul_of_integers_is_cupys_exact_matmul_not_cublas(fake_device, dt):
    """Integer and bool matmul on CUDA is exact (CuPy's integer kernels wrap as NumPy's do);
    cuBLAS, whose GEMMs round, is not called; the device reports the dtype as its own
    accumulation and checks it in."""
    from reference import matmul_exact
    from strategies import int_values

    dev, cublas = fake_device
    dev.check_dtype(np.dtype(dt))
    assert dev.acc_dtype(np.dtype(dt)) == np.dtype(dt) and "gemm" in dev.exact_conv_algorithms
    for ashape, bshape in [((5, 7), (7, 3)), ((7,), (7,)), ((2, 1, 4, 3), (5, 3, 6))]:
        a, b = int_values(1, ashape, dt), int_values(2, bshape, dt)
        got = np.asarray(dev.matmul(as_fa(a), as_fa(b)))
        want = matmul_exact(a, b, dt)
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert cublas.calls == []
    with pytest.raises(TypeError, match=r"cuda:0 \(Fake H100\) computes in float16/32/64, signed and unsigned integers "
                                        r"of 8 to 64 bits, or bool; received complex64"):
        dev.check_dtype(np.dtype(np.complex64))


def test_a_bad_cudnn_switch_does_not_stop_a_matmul(fake_device, monkeypatch):
    """XDEV_CUDNN_FAST is cuDNN's switch: refused by cuDNN convolutions, ignored by cuBLAS."""
    dev, cublas = fake_device
    monkeypatch.setenv("XDEV_CUDNN_FAST", "sometimes")
    a = values(1, (4, 4), np.float32)
    for _ in range(2):  # the first call plans, the second takes the remembered call
        np.testing.assert_allclose(dev.matmul(as_fa(a), as_fa(a)), a @ a, rtol=1e-5)


def test_a_remembered_matmul_call_that_fails_is_planned_again(fake_device):
    """The remembered cuBLAS call is a shortcut: when it raises, the call is planned from scratch
    (and remembered again); an error that planning meets too is the one raised."""
    dev, cublas = fake_device
    a, b = values(1, (6, 5), np.float32), values(2, (5, 3), np.float32)
    dev.matmul(as_fa(a), as_fa(b))
    key = next(iter(dev._matmul_calls))
    cublas.failures = 1
    np.testing.assert_allclose(dev.matmul(as_fa(a), as_fa(b)), a @ b, rtol=1e-5)
    assert key in dev._matmul_calls
    cublas.failures = 2
    with pytest.raises(RuntimeError, match="CUBLAS_STATUS_EXECUTION_FAILED"):
        dev.matmul(as_fa(a), as_fa(b))
    np.testing.assert_allclose(dev.matmul(as_fa(a), as_fa(b)), a @ b, rtol=1e-5)


# ==== stream.py: CuPy's current stream pointer, by its C-level accessor only where it is right ======

@pytest.fixture
def stream_module(monkeypatch):
    """(load, state): load(accessor) imports stream.py on a fake CuPy whose ``with Stream():``
    makes a stream current, with ``accessor`` as cupy_backends.cuda.stream.get_current_stream_ptr
    (None: CuPy 14, which has no Python-level accessor)."""
    state = SimpleNamespace(current=0, made=0)

    class Stream:
        def __init__(self):
            state.made += 1
            self.ptr = 0x1000 + state.made

        def __enter__(self):
            self.prev, state.current = state.current, self.ptr
            return self

        def __exit__(self, *a):
            state.current = self.prev

    cp = types.ModuleType("cupy")
    cp.cuda = SimpleNamespace(Stream=Stream, get_current_stream=lambda: SimpleNamespace(ptr=state.current))

    def load(accessor):
        backend_stream = types.ModuleType("cupy_backends.cuda.stream")
        if accessor is not None:
            backend_stream.get_current_stream_ptr = accessor
        for name, m in (("cupy", cp), ("cupy_backends", types.ModuleType("cupy_backends")),
                        ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                        ("cupy_backends.cuda.stream", backend_stream)):
            monkeypatch.setitem(sys.modules, name, m)
        spec = importlib.util.spec_from_file_location("xdev_fake_stream", CUDA_DIR / "stream.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.pointer_function()

    return load, state


def test_the_stream_accessor_is_used_only_where_it_follows_the_current_stream(stream_module):
    load, state = stream_module
    right = lambda: state.current  # noqa: E731  (what CuPy's accessor returns)
    for accessor, fast in ((None, False), (right, True), (lambda: 0, False),  # stuck on the default stream
                           (lambda: 1 / 0, False)):  # raises at once
        read = load(accessor)
        assert (read.__name__ == "read") == fast, accessor
        for current in (0, 0x7777):
            state.current = current
            assert read() == current
        state.current = 0


def test_an_accessor_that_raises_later_gives_way_to_the_plain_read(stream_module):
    load, state = stream_module
    calls = SimpleNamespace(n=0)

    def flaky():
        calls.n += 1
        if calls.n > 4:  # it passed the checks, then stops working
            raise RuntimeError("no current device")
        return state.current

    read = load(flaky)
    assert read.__name__ == "read"
    state.current = 0x4242
    assert [read() for _ in range(3)] == [0x4242] * 3
