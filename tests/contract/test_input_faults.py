"""Input and tool faults found by probing xdev as a new user: each is a clear error (or
works as in NumPy/torch), never a crash, a traceback from a diagnostic tool, or a wrong shape."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xdev
from availability import backend_status, require, usable_backend
from child import child_env, run_child

BACKENDS = ("numpy", "opencl")


# -- inputs --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_zero_d_inputs_keep_their_shape_and_matmul_refuses_them(name):
    b = usable_backend(name)
    s = xdev.asarray(np.float32(3), backend=b)
    assert s.shape == () and s.numpy() == np.float32(3)
    with pytest.raises(ValueError, match="at least 1 dimension"):
        xdev.matmul(np.float32(2), np.float32(3), backend=b)
    with pytest.raises(ValueError, match=r"bias must have shape \(1,\)"):
        xdev.conv2d(np.ones((1, 1, 3, 3), "f4"), np.ones((1, 1, 1, 1), "f4"), bias=np.float32(1), backend=b)


def test_unknown_dtype_string_is_a_type_error():
    with pytest.raises(TypeError, match="received dtype 'foo'"):
        xdev.asarray([1.0], dtype="foo")


@pytest.mark.parametrize("name", BACKENDS)
def test_none_operand_is_a_type_error(name):
    b = usable_backend(name)
    with pytest.raises(TypeError, match="operand a is None"):
        xdev.matmul(None, np.ones((2, 2)), backend=b)
    with pytest.raises(TypeError, match="operand b is None"):
        xdev.matmul(xdev.asarray(np.ones((2, 2)), backend=b), None)


@pytest.mark.parametrize("name", BACKENDS)
def test_numpy_integers_and_one_element_tuples_are_accepted_like_torch(name):
    b = usable_backend(name)
    x = np.arange(2 * 4 * 7 * 7, dtype=np.float32).reshape(2, 4, 7, 7)
    w = np.linspace(-1, 1, 4 * 2 * 3 * 3, dtype=np.float32).reshape(4, 2, 3, 3)
    ref = xdev.conv2d(x, w, stride=2, padding=1, groups=2, backend="numpy").numpy()
    for kw in (dict(stride=np.int64(2), padding=np.int32(1), groups=np.int64(2)),
               dict(stride=(2,), padding=(1,), dilation=(1,), groups=2),
               dict(stride=(np.int64(2), 2), padding=[1], groups=np.int8(2))):
        y = xdev.conv2d(x, w, backend=b, **kw)
        np.testing.assert_allclose(y.numpy(), ref, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="stride must be"):
        xdev.conv2d(x, w, stride=(1, 2, 3), groups=2, backend=b)
    with pytest.raises(ValueError, match="groups must be a positive int"):
        xdev.conv2d(x, w, groups=np.float64(2), backend=b)


@pytest.mark.parametrize("name", BACKENDS)
def test_np_matmul_on_xdev_arrays(name):
    b = usable_backend(name)
    a = xdev.asarray(np.eye(3, dtype=np.float32) * 2, backend=b)
    h = np.arange(9, dtype=np.float32).reshape(3, 3)
    for r in (np.matmul(a, a), h @ a, np.matmul(h, a)):
        assert isinstance(r, xdev.Array) and r.device == a.device
    np.testing.assert_allclose((h @ a).numpy(), h * 2)
    with pytest.raises(TypeError, match=r"add cannot run on an xdev.Array.*\.numpy\(\)"):
        np.add(a, a)
    with pytest.raises(TypeError, match=r"xdev.matmul.*\.numpy\(\)"):
        np.matmul(a, a, out=np.empty((3, 3), np.float32))


def test_huge_dilation_and_stride_compute_where_they_change_nothing():
    require("opencl")
    x = np.linspace(-1, 1, 2 * 3 * 5 * 6, dtype=np.float32).reshape(2, 3, 5, 6)
    w = np.linspace(-1, 1, 4 * 3, dtype=np.float32).reshape(4, 3, 1, 1)
    for kw in (dict(dilation=2**31), dict(dilation=2**40, stride=(1, 2))):
        ref = xdev.conv2d(x, w, backend="numpy", **kw).numpy()
        got = xdev.conv2d(x, w, backend="opencl", **kw).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # One output row: the stride is never applied.
    ref = xdev.conv2d(x, w, stride=(2**33, 1), backend="numpy").numpy()
    np.testing.assert_allclose(xdev.conv2d(x, w, stride=(2**33, 1), backend="opencl").numpy(), ref,
                               rtol=1e-5, atol=1e-5)


def test_sizes_past_the_kernels_int32_are_a_value_error_naming_the_limit():
    from xdev.contract.shapes import check_int32

    with pytest.raises(ValueError, match=r"^matmul on X: M\*N = 4294967296 exceeds the kernels' 32-bit index limit "
                                         r"\(2147483647\); the hint$"):
        check_int32("matmul on X", "the hint", **{"M*N": 2**32})
    check_int32("matmul on X", "the hint", M=2**31 - 1)
    x = np.ones((1, 1, 3, 3), "f4")
    with pytest.raises(ValueError, match=r"padded H\*W = 4295360521 exceeds the kernels' 32-bit index limit"):
        # Padding is applied: it cannot be normalized away (each side is within the contract's 2**31-1).
        xdev.conv2d(x, np.ones((1, 1, 1, 1), "f4"), padding=2**15, stride=2**16, backend=usable_backend("opencl"))


# -- diagnostic tools -------------------------------------------------------------------------
def test_info_reports_a_bad_xdev_backend():
    r = subprocess.run([sys.executable, "-m", "xdev.info"], capture_output=True, text=True,
                       timeout=600, env={**child_env(), "XDEV_BACKEND": "garbage"})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "XDEV_BACKEND='garbage' -> INVALID" in r.stdout and "valid names are numpy" in r.stdout


def test_bench_with_no_usable_backend_fails_with_the_reason():
    pytest.importorskip("rich")
    if backend_status("cuda").available:
        pytest.skip("a CUDA device is available here")
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--quick", "--backends", "cuda"],
                       capture_output=True, text=True, timeout=600, env=child_env())
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert "nothing to measure" in r.stdout and "cuda: unavailable" in r.stdout
    assert "0 results" not in r.stdout


def test_conv_argument_checks_do_not_depend_on_call_order():
    # The geometry check is memoized; 1, 1.0 and True are equal keys to a plain cache, so a
    # bool or float stride must still be refused after stride=1 was accepted.
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    xdev.conv2d(x, w, stride=1, backend="numpy")
    xdev.conv2d(x, w, stride=(1, 1), backend="numpy")
    for bad in (True, 1.0, (1, True), (1.0, 1)):
        with pytest.raises((TypeError, ValueError)):
            xdev.conv2d(x, w, stride=bad, backend="numpy")
    with pytest.raises((TypeError, ValueError)):
        xdev.conv2d(x, w, stride=[1, True], backend="numpy")
