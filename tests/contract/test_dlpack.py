"""DLPack both ways (Array.__dlpack__, xdev.from_dlpack) and the CUDA array interface.

Zero-copy is checked by writing through one side and reading through the other; strides by
exporting transposed and sliced views.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import pytest

import xdev

from availability import require
from child import run_child
from reference import matmul_ref
from tolerance import assert_agrees


def _host(shape=(3, 5), dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype(dtype)


def _torch():
    return pytest.importorskip("torch", reason="torch is not installed (optional: pip install torch)")


# ---- NumPy -------------------------------------------------------------------------------------
def test_numpy_array_exports_its_own_memory():
    a = xdev.asarray(_host(), backend="numpy")
    assert a.__dlpack_device__() == (1, 0)
    view = np.from_dlpack(a)
    assert np.shares_memory(view, a.data)
    view[1, 2] = 42.0  # a write through NumPy is seen by xdev
    assert a.numpy()[1, 2] == 42.0
    np.testing.assert_array_equal(view, a.numpy())


@pytest.mark.parametrize("view", ["T", "slice", "batch_mT"])
def test_numpy_export_keeps_strides(view):
    base = xdev.asarray(_host((4, 6, 5)), backend="numpy")
    v = {"T": lambda x: x.T, "slice": lambda x: x[1:, ::2, 1:4], "batch_mT": lambda x: x.mT}[view](base)
    out = np.from_dlpack(v)
    assert out.strides == v.data.strides and out.shape == v.shape
    assert np.shares_memory(out, base.data)
    np.testing.assert_array_equal(out, v.numpy())


def test_negative_strides_and_read_only_memory_export_a_copy():
    # torch aborts the process on negative strides and writes into read-only memory, and a
    # producer cannot tell which consumer calls it: such arrays leave xdev only as copies.
    base = xdev.asarray(_host((4, 6, 5)), backend="numpy")
    h = _host((3, 4))
    h.flags.writeable = False
    for v, why in ((base[::-1, :, ::-2], "negative strides"), (base.T[:, ::-1], "negative strides"),
                   (xdev.from_dlpack(h), "read-only memory")):
        for versioned in (False, True):
            out = np.from_dlpack(_Capsule(v.__dlpack__(max_version=(1, 0) if versioned else None)))
            assert not np.shares_memory(out, v.data) and all(s > 0 for s in out.strides)
            # (NumPy marks what a legacy capsule holds read-only: it carries no flag.)
            assert out.flags.writeable == versioned
            np.testing.assert_array_equal(out, v.numpy())
        with pytest.raises(BufferError, match=rf"copy=False.*{why}.*only as a copy"):
            v.__dlpack__(copy=False)
        assert not np.shares_memory(np.from_dlpack(v, copy=True), v.data)


class _Capsule:
    """A producer that hands out one capsule made earlier (to read each kind of capsule)."""

    def __init__(self, capsule):
        self.capsule = capsule

    def __dlpack__(self, **kwargs):
        return self.capsule

    def __dlpack_device__(self):
        return (1, 0)


def test_from_dlpack_numpy_shares_memory_and_round_trips():
    h = _host((4, 3))
    a = xdev.from_dlpack(h)
    assert a.backend == "numpy" and a.shape == (4, 3) and a.dtype == np.float32
    assert np.shares_memory(a.data, h)
    h[0, 0] = -7.0  # a write through the producer is seen by xdev
    assert a.numpy()[0, 0] == -7.0
    back = np.from_dlpack(a)  # and back again: still the same memory
    assert np.shares_memory(back, h)
    t = xdev.from_dlpack(h.T)
    assert t.data.strides == h.T.strides and np.shares_memory(t.data, h)


def test_from_dlpack_result_computes_like_asarray():
    a, b = _host((5, 7), seed=1), _host((7, 4), seed=2)
    c = xdev.matmul(xdev.from_dlpack(a), xdev.from_dlpack(b.T.copy()).T)  # a transposed view operand
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(c.numpy(), ref, ref_abs, 7, np.float32, np.float32, "matmul of DLPack-wrapped arrays")


def test_copy_true_copies_and_copy_false_never_does():
    h = _host()
    c = xdev.from_dlpack(h, copy=True)
    assert not np.shares_memory(c.data, h)
    np.testing.assert_array_equal(c.numpy(), h)
    nc = xdev.from_dlpack(h, copy=False)
    assert np.shares_memory(nc.data, h)
    a = xdev.asarray(h, backend="numpy")
    exported = np.from_dlpack(a, copy=True)
    assert not np.shares_memory(exported, a.data)


def test_versioned_capsule_and_streams_on_the_cpu():
    a = xdev.asarray(_host(), backend="numpy")
    assert "dltensor_versioned" in repr(a.__dlpack__(max_version=(1, 0)))
    assert '"dltensor"' in repr(a.__dlpack__())  # legacy consumers get the legacy capsule
    with pytest.raises(ValueError, match="stream must be None"):
        a.__dlpack__(stream=1)
    assert np.shares_memory(np.from_dlpack(a, device="cpu"), a.data)  # dl_device=(CPU, 0): its own
    with pytest.raises(BufferError, match=r"DLPack device \(2, 0\)"):
        a.__dlpack__(dl_device=(2, 0))


def test_read_only_producers_arrive_read_only_and_compute():
    h = _host((4, 4))
    h.flags.writeable = False
    a = xdev.from_dlpack(h)
    assert np.shares_memory(a.data, h) and not a.data.flags.writeable
    ref, ref_abs = matmul_ref(h, h)
    assert_agrees((a @ a).numpy(), ref, ref_abs, 4, np.float32, np.float32, "read-only operand")


def test_from_dlpack_of_an_xdev_array():
    a = xdev.asarray(_host(), backend="numpy")
    assert xdev.from_dlpack(a) is a
    c = xdev.from_dlpack(a, copy=True)
    assert c is not a and not np.shares_memory(c.data, a.data)


def test_from_dlpack_refuses_what_it_cannot_take():
    with pytest.raises(TypeError, match="__dlpack__"):
        xdev.from_dlpack([1.0, 2.0])
    with pytest.raises(TypeError, match="complex64"):
        xdev.from_dlpack(np.arange(3, dtype=np.complex64))
    with pytest.raises(TypeError, match="copy is None, True or False"):
        xdev.from_dlpack(_host(), copy="yes")
    with pytest.raises(ValueError, match="unknown backend"):
        xdev.from_dlpack(_host(), backend="metal")


class _NegView:
    """Like a torch tensor with its negative bit set: its memory holds -values."""

    def __init__(self, memory: np.ndarray) -> None:
        self.memory = memory

    def __dlpack__(self, **kwargs):
        return self.memory.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return (1, 0)

    def is_neg(self) -> bool:
        return True

    def resolve_neg(self) -> np.ndarray:
        return -self.memory


def test_negative_bit_is_refused_or_resolved_by_a_copy():
    mem = _host((2, 3))
    for copy in (None, False):
        with pytest.raises(BufferError, match=r"negative bit set.*copy=True.*resolve_neg\(\)"):
            xdev.from_dlpack(_NegView(mem), copy=copy)
    got = xdev.from_dlpack(_NegView(mem), copy=True)
    np.testing.assert_array_equal(got.numpy(), -mem)
    assert not np.shares_memory(got.data, mem)


class _Bfloat16:
    """A producer of bfloat16 data (a float16 capsule relabelled kDLBfloat, as torch exports)."""

    dtype = "bfloat16"

    def __dlpack__(self, **kwargs):
        capsule = np.zeros(3, np.float16).__dlpack__()  # legacy: a DLManagedTensor
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        tensor = get(capsule, b"dltensor")
        # DLTensor: data pointer, device (2 x int32), ndim (int32), then dtype.code (uint8)
        ctypes.c_uint8.from_address(tensor + 20).value = 4  # kDLBfloat
        return capsule

    def __dlpack_device__(self):
        return (1, 0)


class _BadDevice:
    def __init__(self, device):
        self.device = device

    def __dlpack__(self, **kwargs):
        return np.zeros(2).__dlpack__()

    def __dlpack_device__(self):
        return self.device


def test_bad_producers_get_clear_messages():
    for dev in ((1,), None, ("cpu", 0)):
        with pytest.raises(ValueError, match=rf"__dlpack_device__\(\) returned {re.escape(repr(dev))}; "
                                             rf"DLPack producers return a pair of ints"):
            xdev.from_dlpack(_BadDevice(dev))
    for copy in (None, True):
        with pytest.raises(TypeError, match=r"dtype bfloat16 cannot be read .*t\.float\(\) converts it "
                                            r"to float32 exactly"):
            xdev.from_dlpack(_Bfloat16(), copy=copy)


def test_cuda_array_interface_only_on_cuda():
    a = xdev.asarray(_host(), backend="numpy")
    assert not hasattr(a, "__cuda_array_interface__")


# ---- OpenCL: no DLPack consumer reads its buffers ----------------------------------------------
def test_opencl_export_is_a_clear_error():
    require("opencl")
    a = xdev.asarray(_host(), backend="opencl")
    for call in (a.__dlpack__, a.__dlpack_device__, lambda: np.from_dlpack(a)):
        with pytest.raises(BufferError, match=r"a\.numpy\(\).*a\.to\("):
            call()
    assert not hasattr(a, "__cuda_array_interface__")
    # An explicit copy to the host is what DLPack's dl_device/copy=True asks for.
    host = np.from_dlpack(a, device="cpu", copy=True)
    np.testing.assert_array_equal(host, a.numpy())
    with pytest.raises(BufferError, match="copy=True"):
        np.from_dlpack(a, device="cpu")


def test_from_dlpack_to_another_device_needs_copy_true():
    require("opencl")
    h = _host((6, 4))
    with pytest.raises(BufferError, match=r"\.to\('opencl"):
        xdev.from_dlpack(h, backend="opencl")
    with pytest.raises(BufferError, match="copy=False"):
        xdev.from_dlpack(h, backend="opencl", copy=False)
    with xdev.use_backend("opencl"), pytest.raises(BufferError, match="copy=True"):
        xdev.from_dlpack(h)
    o = xdev.from_dlpack(h.T, backend="opencl", copy=True)
    assert o.backend == "opencl"
    np.testing.assert_array_equal(o.numpy(), h.T)
    a = xdev.asarray(h, backend="numpy")
    with pytest.raises(BufferError, match=r"\.to\("):
        xdev.from_dlpack(a, backend="opencl")
    np.testing.assert_array_equal(xdev.from_dlpack(a, backend="opencl", copy=True).numpy(), h)


# ---- torch (CPU tensors here; CUDA tensors where a GPU is) -------------------------------------
def test_torch_round_trip_shares_memory():
    torch = _torch()
    a = xdev.asarray(_host((4, 5)), backend="numpy")
    t = torch.from_dlpack(a)
    assert t.data_ptr() == a.data.ctypes.data
    t[2, 3] = 11.0
    assert a.numpy()[2, 3] == 11.0
    tt = torch.from_dlpack(a.T)  # strides in elements: (1, 5)
    assert tt.stride() == (1, 5) and tuple(tt.shape) == (5, 4)
    assert tt.data_ptr() == a.data.ctypes.data

    src = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    x = xdev.from_dlpack(src)
    assert x.backend == "numpy" and x.data.ctypes.data == src.data_ptr()
    src[0, 1] = -5.0
    assert x.numpy()[0, 1] == -5.0
    xt = xdev.from_dlpack(src.t())
    assert xt.data.strides == (4, 16) and xt.data.ctypes.data == src.data_ptr()
    back = torch.from_dlpack(x)  # torch -> xdev -> torch: one buffer throughout
    assert back.data_ptr() == src.data_ptr()


def test_torch_matmul_through_dlpack_agrees():
    torch = _torch()
    a, b = torch.randn(6, 9, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    c = xdev.matmul(xdev.from_dlpack(a), xdev.from_dlpack(b).T)
    ref, ref_abs = matmul_ref(a.numpy(), b.numpy().T)
    assert_agrees(np.from_dlpack(c), ref, ref_abs, 9, np.float64, np.float64, "torch operands")
    assert torch.from_dlpack(c).shape == (6, 4)


def test_torch_negative_bit_and_bfloat16():
    torch = _torch()
    im = torch.tensor([1 + 2j, 3 + 4j, 5 + 6j]).conj().imag  # -2, -4, -6 with the negative bit
    with pytest.raises(BufferError, match="negative bit"):
        xdev.from_dlpack(im)
    np.testing.assert_array_equal(xdev.from_dlpack(im, copy=True).numpy(), [-2.0, -4.0, -6.0])
    with pytest.raises(TypeError, match=r"torch\.bfloat16 .*t\.float\(\)"):
        xdev.from_dlpack(torch.zeros(3, dtype=torch.bfloat16))


def test_torch_takes_negative_strided_and_read_only_exports_safely(tmp_path):
    _torch()
    # Without the copy torch aborts ("Storage size calculation overflowed") or segfaults (add_
    # on a read-only memory map): in a child process.
    np.save(tmp_path / "ro.npy", np.arange(6.0))
    code = (
        "import numpy as np, torch, xdev\n"
        "a = xdev.asarray(np.arange(12.0).reshape(3, 4))\n"
        "t = torch.from_dlpack(a[::-1, ::-2])\n"
        "assert t.tolist() == np.arange(12.0).reshape(3, 4)[::-1, ::-2].tolist(), t\n"
        f"m = xdev.from_dlpack(np.load({str(tmp_path / 'ro.npy')!r}, mmap_mode='r'))\n"
        "u = torch.from_dlpack(m)\n"
        "u.add_(1)\n"
        "assert u.tolist() == [1.0, 2, 3, 4, 5, 6] and m.numpy().tolist() == [0.0, 1, 2, 3, 4, 5]\n"
        "print('ok')\n"
    )
    out = run_child(code, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-3000:])
    assert np.load(tmp_path / "ro.npy").tolist() == [0.0, 1, 2, 3, 4, 5]


def test_torch_cannot_read_opencl_memory():
    torch = _torch()
    require("opencl")
    with pytest.raises(BufferError, match=r"a\.numpy\(\)"):
        torch.from_dlpack(xdev.asarray(_host(), backend="opencl"))


# ---- CUDA (runs on a GPU machine; skipped here with the reason) --------------------------------
def _cupy():
    require("cuda")
    return pytest.importorskip("cupy")


def test_cuda_dlpack_and_array_interface_share_device_memory():
    cupy = _cupy()
    a = xdev.asarray(_host((8, 3)), backend="cuda")
    assert a.__dlpack_device__() == (2, 0)
    c = cupy.from_dlpack(a)
    assert c.data.ptr == a.data.data.ptr
    c[1, 1] = 9.0
    assert a.numpy()[1, 1] == 9.0
    cai = a.__cuda_array_interface__
    assert cai["data"][0] == a.data.data.ptr and tuple(cai["shape"]) == (8, 3)
    assert cupy.asarray(a).data.ptr == a.data.data.ptr  # CuPy reads the interface without a copy
    t = cupy.from_dlpack(a.T)
    assert t.strides == a.data.T.strides and t.data.ptr == a.data.data.ptr
    r = cupy.from_dlpack(a[::-1])  # negative strides leave as a copy (torch aborts on them)
    assert r.data.ptr != a.data.data.ptr and all(s > 0 for s in r.strides)
    np.testing.assert_array_equal(cupy.asnumpy(r), a.numpy()[::-1])

    src = cupy.arange(12, dtype=cupy.float32).reshape(3, 4)
    x = xdev.from_dlpack(src)
    assert x.backend == "cuda" and x.device == "cuda:0" and x.data.data.ptr == src.data.ptr
    src[2, 0] = -1.0
    assert x.numpy()[2, 0] == -1.0
    h = xdev.from_dlpack(src, backend="numpy", copy=True)
    np.testing.assert_array_equal(h.numpy(), cupy.asnumpy(src))
    with pytest.raises(BufferError, match=r"\.to\('numpy'\)"):
        xdev.from_dlpack(src, backend="numpy")


def test_cuda_export_follows_the_consumer_stream():
    cupy = _cupy()
    a = xdev.asarray(_host((256, 256)), backend="cuda")
    c = xdev.matmul(a, a)  # queued on CuPy's current stream
    s = cupy.cuda.Stream(non_blocking=True)
    with s:  # the consumer's stream waits for the producer's work (DLPack stream rule)
        d = cupy.from_dlpack(c)
        total = float(d.sum())
    assert total == pytest.approx(float(c.numpy().sum()), rel=1e-5)
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        tc = torch.from_dlpack(c)
        assert tc.data_ptr() == c.data.data.ptr
        x = xdev.from_dlpack(torch.ones(3, 3, device="cuda").t())
        assert x.backend == "cuda" and x.data.strides == (4, 12)
