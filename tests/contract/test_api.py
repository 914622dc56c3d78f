"""The API contract: backend resolution, lazy imports, Array behaviour."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import xdev
from xdev import _config
from xdev._registry import BACKEND_NAMES


def run_py(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120)


def test_import_is_light_and_backends_load_lazily():
    r = run_py(
        "import sys, xdev, numpy as np\n"
        "heavy = [m for m in ('cupy', 'pyopencl') if m in sys.modules]\n"
        "xdev.matmul(np.ones((2, 2)), np.ones((2, 2)))\n"
        "xdev.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))\n"
        "heavy += [m for m in ('cupy', 'pyopencl') if m in sys.modules]\n"
        "print(heavy)"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_xdev_backend_env_is_read_at_first_use():
    r = run_py(
        "import os, xdev\n"
        "os.environ['XDEV_BACKEND'] = 'numpy'\n"  # set after import: still honoured
        "print(xdev.get_backend(), xdev.asarray([1.0]).backend)",
        XDEV_BACKEND="opencl",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["numpy", "numpy"]


def test_xdev_backend_env_selects_backend():
    r = run_py("import xdev; print(xdev.get_backend())", XDEV_BACKEND="numpy")
    assert r.stdout.strip() == "numpy"


def test_xdev_backend_env_invalid_lists_valid_names():
    r = run_py("import xdev; xdev.asarray([1.0])", XDEV_BACKEND="tpu")
    assert r.returncode != 0
    assert "XDEV_BACKEND='tpu'" in r.stderr and ", ".join(BACKEND_NAMES) in r.stderr


def test_set_backend_any_time_and_default():
    saved = _config._global
    try:
        xdev.set_backend("numpy")
        assert xdev.get_backend() == "numpy"
        with pytest.raises(ValueError, match="valid names are " + ", ".join(BACKEND_NAMES)):
            xdev.set_backend("metal")
    finally:
        _config._global = saved


def test_use_backend_nests_and_restores():
    base = xdev.get_backend()
    with xdev.use_backend("numpy"):
        assert xdev.get_backend() == "numpy"
        with xdev.use_backend("opencl"):
            assert xdev.get_backend() == "opencl"
        assert xdev.get_backend() == "numpy"
    assert xdev.get_backend() == base


def test_use_backend_is_thread_local():
    seen = {}
    inside = threading.Event()
    release = threading.Event()

    def worker():
        seen["worker_before"] = xdev.get_backend()
        with xdev.use_backend("cuda"):
            inside.set()
            release.wait(10)
            seen["worker_inside"] = xdev.get_backend()

    t = threading.Thread(target=worker)
    with xdev.use_backend("opencl"):
        t.start()
        inside.wait(10)
        seen["main_while_worker_in_cuda"] = xdev.get_backend()
        release.set()
        t.join(10)
    assert seen["main_while_worker_in_cuda"] == "opencl"
    assert seen["worker_inside"] == "cuda"
    assert seen["worker_before"] == xdev.get_backend()  # the context did not leak into the thread


def test_backend_argument_beats_context():
    with xdev.use_backend("cuda"):  # would fail if used: no GPU needed for this test
        y = xdev.matmul(np.ones((2, 3)), np.ones((3, 2)), backend="numpy")
    assert y.backend == "numpy"
    np.testing.assert_array_equal(y.numpy(), np.full((2, 2), 3.0))


def test_available_backends_reports_every_backend():
    st = xdev.available_backends()
    assert tuple(st) == BACKEND_NAMES and {"numpy", "opencl", "cuda"} <= set(st)
    assert st["numpy"].available and st["numpy"].devices == ("numpy",)
    for name, s in st.items():
        assert isinstance(s, xdev.BackendStatus)
        assert s.reason, f"{name} gives no reason"
        if not s.available:
            assert not s.devices


def test_array_properties_and_transfers():
    h = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    a = xdev.asarray(h, backend="numpy")
    h[0, 0, 0] = 99  # asarray copied
    assert a.shape == (2, 3, 4) and a.ndim == 3 and a.size == 24 and a.nbytes == 96
    assert a.dtype == np.float32 and a.backend == "numpy" and a.device == "numpy"
    assert a.numpy()[0, 0, 0] == 0
    np.testing.assert_array_equal(np.asarray(a), np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    assert np.asarray(a, dtype=np.float64).dtype == np.float64
    assert a.T.shape == (4, 3, 2) and a.mT.shape == (2, 4, 3)
    np.testing.assert_array_equal(a.mT.numpy(), np.swapaxes(a.numpy(), 1, 2))
    np.testing.assert_array_equal(a[1, ::2, 1:].numpy(), a.numpy()[1, ::2, 1:])
    np.testing.assert_array_equal(a.transpose(1, 0, 2).numpy(), a.numpy().transpose(1, 0, 2))
    np.testing.assert_array_equal(a.reshape(6, -1).numpy(), a.numpy().reshape(6, 4))
    assert a.to("numpy") is a
    assert "shape=(2, 3, 4)" in repr(a) and "float32" in repr(a) and "numpy" in repr(a)
    assert len(a) == 2


def test_asarray_dtypes():
    assert xdev.asarray([1.0, 2.0]).dtype == np.float64
    assert xdev.asarray([1, 2], dtype="float32").dtype == np.float32
    assert xdev.asarray(np.ones(3, np.float16)).dtype == np.float16
    a = xdev.asarray(np.ones(3, np.float32))
    assert xdev.asarray(a) is a
    assert xdev.asarray(a, dtype=np.float64).dtype == np.float64


def test_array_cannot_be_constructed_directly():
    with pytest.raises(TypeError, match="xdev.asarray"):
        xdev.Array(np.ones(3))


def test_conv_result_records_algorithm(device):
    x, w = np.ones((1, 2, 5, 5)), np.ones((3, 2, 3, 3))
    y = xdev.conv2d(x, w, padding="same", backend=device.key)
    assert y.algorithm in device.conv_algorithms and f"algorithm='{y.algorithm}'" in repr(y)
    for algo in device.conv_algorithms:
        assert xdev.conv2d(x, w, padding="same", algorithm=algo, backend=device.key).algorithm == algo


def test_synchronize_runs():
    xdev.synchronize()
    xdev.synchronize("numpy")


def test_queued_work_is_waited_for_at_interpreter_exit():
    """A script that ends with work still queued exits after every opened device has finished
    it (PoCL crashed when Python freed the buffers of kernels its threads still ran), and a
    device that fails to synchronize does not turn the exit into an error."""
    code = (
        "import xdev\n"
        "from xdev._registry import get_device\n"
        "dev = get_device('numpy')\n"
        "def sync():\n"
        "    print('synchronized', flush=True)\n"
        "    raise RuntimeError('a device that cannot be reached')\n"
        "dev.synchronize = sync\n"
        "xdev.matmul([[1.0]], [[2.0]])\n"
        "print('end of script', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split("\n")[:2] == ["end of script", "synchronized"], r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_info_lists_every_backend_with_a_reason():
    r = run_py("import runpy; runpy.run_module('xdev.info', run_name='__main__')")
    assert r.returncode == 0, r.stderr
    for name in BACKEND_NAMES:
        assert any(line.startswith(name) and (" available:" in line or " unavailable:" in line)
                   for line in r.stdout.splitlines()), (name, r.stdout)


def test_zero_dim_array_keeps_its_shape(device):
    a = xdev.asarray(np.float32(2.5), backend=device.key)
    assert a.shape == () and a.numpy().shape == () and float(a.numpy()) == 2.5
    with pytest.raises(ValueError, match="at least 1 dimension"):
        xdev.matmul(a, np.ones(3, np.float32))
