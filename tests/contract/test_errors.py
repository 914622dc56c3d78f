"""Errors say what was received, what was expected, and how to fix it."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import xdev
from xdev import _registry
from xdev.backends.numpy.device import NumpyDevice


def test_matmul_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"a \(2, 3\) @ b \(4, 5\)"):
        xdev.matmul(np.ones((2, 3)), np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(7,\) @ b \(3,\)"):
        xdev.matmul(np.ones(7), np.ones(3))
    with pytest.raises(ValueError, match=r"do not broadcast.*\(2, 3, 4\) @ b \(5, 4, 2\)"):
        xdev.matmul(np.ones((2, 3, 4)), np.ones((5, 4, 2)))
    with pytest.raises(ValueError, match="at least 1 dimension"):
        xdev.matmul(np.float64(2.0), np.ones(3))


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError, match="unknown backend 'tpu'.*" + ", ".join(_registry.BACKEND_NAMES)):
        xdev.asarray([1.0], backend="tpu")


def test_data_xdev_does_not_compute_in_is_refused_with_fix():
    with pytest.raises(TypeError, match=r"dtype <U1.*dtype='float32'"):
        xdev.asarray(np.array(["a", "b"]))
    with pytest.raises(TypeError, match=r"float16/32/64, signed and unsigned integers of 8 to 64 bits, or bool; "
                                        r"received dtype 'complex64'"):
        xdev.asarray([1.0], dtype="complex64")
    with pytest.raises(TypeError, match="complex128"):
        xdev.matmul(np.ones((2, 2), complex), np.ones((2, 2)))


@pytest.mark.parametrize(
    "kwargs,xs,ws,pattern",
    [
        (dict(groups=3), (1, 4, 8, 8), (6, 2, 3, 3), r"groups=3 must divide the input channels C=4"),
        (dict(groups=2), (1, 4, 8, 8), (5, 2, 3, 3), r"groups=2 must divide the output channels O=5"),
        (dict(), (1, 4, 8, 8), (6, 3, 3, 3), r"weight \(6, 3, 3, 3\) has 3 input channels per group"),
        (dict(), (1, 1, 4, 4), (1, 1, 5, 5), r"kernel 5x5 .* larger than the padded input 4x4"),
        (dict(padding=1, dilation=3), (1, 1, 4, 4), (1, 1, 3, 3), r"spans 7x7 pixels"),
        (dict(stride=0), (1, 1, 4, 4), (1, 1, 3, 3), r"stride must be an int >= 1.*received 0"),
        (dict(dilation=(1, 0)), (1, 1, 4, 4), (1, 1, 3, 3), r"dilation must be an int >= 1"),
        (dict(padding=-1), (1, 1, 4, 4), (1, 1, 3, 3), r"padding must be an int >= 0"),
        (dict(padding="full"), (1, 1, 4, 4), (1, 1, 3, 3), r"'valid' or 'same'; received 'full'"),
        (dict(padding="same", stride=2), (1, 1, 4, 4), (1, 1, 3, 3), r"'same' needs stride 1"),
        (dict(groups=0), (1, 1, 4, 4), (1, 1, 3, 3), r"groups must be a positive int"),
        (dict(), (2, 4, 4), (1, 1, 3, 3), r"weight \(1, 1, 3, 3\) has 1 input channels per group.*C/groups = 2"),
        (dict(), (4, 4), (1, 1, 3, 3), r"\(N, C, H, W\) or \(C, H, W\); received shape \(4, 4\)"),
        (dict(), (1, 1, 4, 4), (1, 3, 3), r"weight must have shape \(O, C/groups, kH, kW\)"),
    ],
)
def test_conv_parameter_errors(kwargs, xs, ws, pattern):
    with pytest.raises(ValueError, match=pattern):
        xdev.conv2d(np.ones(xs), np.ones(ws), **kwargs)


def test_conv_unknown_algorithm_lists_the_device_algorithms(device):
    # Runs on every backend, and on the default one: the list is the device's own.
    expected = ", ".join(("auto",) + tuple(device.conv_algorithms))
    with pytest.raises(ValueError, match=rf"'winograd' is not available on {device.key}; choose one of {expected}$"):
        xdev.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), algorithm="winograd", backend=device.key)
    default = xdev.get_backend()
    with pytest.raises(ValueError, match=rf"'winograd' is not available on {default}"):
        xdev.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), algorithm="winograd")


def test_conv_bias_shape():
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\).*received \(5,\)"):
        xdev.conv2d(np.ones((1, 2, 5, 5)), np.ones((6, 2, 3, 3)), np.ones(5))


def test_missing_backend_package_names_the_pip_extra():
    code = (
        "import sys; sys.modules['pyopencl'] = None; sys.modules['cupy'] = None\n"
        "import xdev\n"
        "s = xdev.available_backends()\n"
        "print(s['opencl'].available, s['opencl'].reason)\n"
        "print(s['cuda'].available, s['cuda'].reason)\n"
        "try:\n    xdev.asarray([1.0], backend='opencl')\n"
        "except xdev.BackendUnavailable as e:\n    print('raised', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("False") and 'pip install "xdev[opencl]"' in lines[0]
    assert lines[1].startswith("False") and 'pip install "xdev[cuda]"' in lines[1]
    assert lines[2].startswith("raised") and 'pip install "xdev[opencl]"' in lines[2]


class _OtherDevice(NumpyDevice):
    key = "numpy:other"


@pytest.fixture
def other_device():
    """A second device (a NumPy twin) so mixing can be tested without a GPU."""
    dev = _OtherDevice()
    _registry._devices["numpy:other"] = dev
    yield dev
    del _registry._devices["numpy:other"]


def test_arrays_of_two_devices_are_a_type_error(other_device):
    a = xdev.asarray(np.ones((2, 2)), backend="numpy")
    b = xdev.asarray(np.ones((2, 2)), backend="numpy:other")
    assert b.device == "numpy:other"
    with pytest.raises(TypeError, match=r"b is an xdev.Array on numpy:other.*b.to\('numpy'\)"):
        xdev.matmul(a, b)
    with pytest.raises(TypeError, match=r"\.to\("):
        a @ b
    with pytest.raises(TypeError, match=r"w is an xdev.Array on numpy:other"):
        xdev.conv2d(xdev.asarray(np.ones((1, 2, 3, 3))), b.reshape(1, 1, 2, 2))
    with xdev.use_backend("numpy:other"):
        with pytest.raises(TypeError, match=r"chosen by use_backend\('numpy:other'\)"):
            xdev.matmul(a, np.ones((2, 2)))
    moved = b.to("numpy")
    np.testing.assert_array_equal(xdev.matmul(a, moved).numpy(), np.full((2, 2), 2.0))


def test_failed_call_leaves_arrays_intact():
    a = xdev.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError):
        xdev.matmul(a, a)
    np.testing.assert_array_equal(a.numpy(), np.arange(6.0).reshape(2, 3))
    assert (a @ a.T).shape == (2, 2)


def test_bad_index_and_reshape_messages():
    a = xdev.asarray(np.ones((2, 3)))
    with pytest.raises(TypeError, match="basic indexing"):
        a[[0, 1]]
    with pytest.raises(ValueError, match=r"cannot reshape an array of shape \(2, 3\)"):
        a.reshape(4, 2)
    with pytest.raises(ValueError, match="mT needs at least 2 dimensions"):
        xdev.asarray(np.ones(3)).mT
