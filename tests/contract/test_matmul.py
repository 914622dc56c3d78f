"""matmul agrees with a float64 reference on every backend (numpy.matmul semantics)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import xdev
from reference import matmul_ref
from strategies import matmul_cases, place, supported_dtypes, values
from tolerance import assert_agrees


def check_matmul(dev, a_shape, b_shape, dt, la, lb, seed):
    a = values(seed, a_shape, dt)
    b = values(seed + 7, b_shape, dt)
    xa = place(a, la, dev.key, seed)
    xb = place(b, lb, dev.key, seed + 3)
    y = xdev.matmul(xa, xb)
    assert y.backend == dev.backend and y.device == dev.key
    ref, ref_abs = matmul_ref(a, b)
    K = a_shape[-1]
    assert_agrees(y.numpy(), ref, ref_abs, K, dev.acc_dtype(dt), dt,
                  f"matmul {a_shape}({la}) @ {b_shape}({lb}) {dt} on {dev.key}")


@st.composite
def _cases(draw, dev):
    return draw(matmul_cases(supported_dtypes(dev)))


def test_matmul_hypothesis(device):
    @given(_cases(device))
    def run(case):
        check_matmul(device, *case)

    run()


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 7, 1), (5, 1, 3), (64, 64, 64), (65, 33, 17), (128, 257, 96)])
def test_matmul_fixed_shapes(device, M, K, N):
    for dt in supported_dtypes(device):
        check_matmul(device, (M, K), (K, N), dt, "contiguous", "contiguous", M * 1000 + K * 10 + N)


def test_matmul_mixed_dtypes_promote(device):
    dts = supported_dtypes(device)
    if len(dts) < 2:
        pytest.skip(f"{device.key} supports only {dts}")
    lo, hi = dts[0], dts[-1]
    a = values(1, (6, 5), lo)
    b = values(2, (5, 4), hi)
    y = xdev.matmul(xdev.asarray(a, backend=device.key), xdev.asarray(b, backend=device.key))
    assert y.dtype == np.promote_types(lo, hi)
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(y.numpy(), ref, ref_abs, 5, device.acc_dtype(y.dtype), y.dtype, "mixed")


def test_matmul_host_operands_are_uploaded(device):
    a = values(3, (4, 6), np.float32)
    b = values(4, (6, 2), np.float32)
    y = xdev.matmul(a, xdev.asarray(b, backend=device.key))
    assert y.device == device.key
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(y.numpy(), ref, ref_abs, 6, device.acc_dtype(np.float32), np.float32, "host a")
    y2 = xdev.matmul(a, b, backend=device.key)
    assert y2.device == device.key


def test_matmul_operator_and_views(device):
    a = values(5, (3, 7, 5), np.float32)
    xa = xdev.asarray(a, backend=device.key)
    y = xa @ xa.mT  # (3,7,7): the same buffer as both operands, one of them transposed
    ref, ref_abs = matmul_ref(a, np.swapaxes(a, -1, -2))
    assert_agrees(y.numpy(), ref, ref_abs, 5, device.acc_dtype(np.float32), np.float32, "a @ a.mT")
    y = a[0] @ xa[1].T  # ndarray @ Array -> __rmatmul__, stays on the device
    assert y.device == device.key
    ref, ref_abs = matmul_ref(a[0], a[1].T)
    assert_agrees(y.numpy(), ref, ref_abs, 5, device.acc_dtype(np.float32), np.float32, "rmatmul")


def test_matmul_does_not_modify_inputs(device):
    a = values(6, (9, 4), np.float32)
    b = values(7, (4, 3), np.float32)
    xa, xb = xdev.asarray(a, backend=device.key), xdev.asarray(b, backend=device.key)
    xdev.matmul(xa, xb)
    np.testing.assert_array_equal(xa.numpy(), a)
    np.testing.assert_array_equal(xb.numpy(), b)
