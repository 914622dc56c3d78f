"""The tolerance helper must reject wrong answers: it is what every agreement test trusts."""
from __future__ import annotations

import numpy as np
import pytest

from reference import conv2d_ref, matmul_ref
from strategies import values
from tolerance import assert_agrees

DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("dt", DTYPES)
def test_accepts_correctly_rounded_results(dt):
    a, b = values(1, (20, 30), dt), values(2, (30, 10), dt)
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(ref.astype(dt), ref, ref_abs, 30, np.float32 if dt == np.float16 else dt, dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_rejects_one_wrong_matmul_element(dt):
    a, b = values(3, (20, 30), dt), values(4, (30, 10), dt)
    ref, ref_abs = matmul_ref(a, b)
    y = ref.copy()
    # One element off by one product term: what a loop that skips one k would give.
    y[7, 3] -= float(a[7, 29]) * float(b[29, 3]) or 1.0
    with pytest.raises(AssertionError, match="1 of 200 elements"):
        assert_agrees(y.astype(dt), ref, ref_abs, 30, np.float32 if dt == np.float16 else dt, dt)


@pytest.mark.parametrize("dt", DTYPES)
def test_rejects_conv_shifted_by_one_pixel(dt):
    x, w = values(5, (1, 3, 12, 12), dt), values(6, (4, 3, 3, 3), dt)
    ref, ref_abs = conv2d_ref(x, w, padding=1)
    shifted = np.roll(ref, 1, axis=-1)
    with pytest.raises(AssertionError, match="outside the bound"):
        assert_agrees(shifted.astype(dt), ref, ref_abs, 27, np.float32 if dt == np.float16 else dt, dt)


def test_rejects_nan_and_wrong_dtype():
    ref = np.ones((2, 2))
    with pytest.raises(AssertionError):
        assert_agrees(np.array([[1, np.nan], [1, 1]], np.float32), ref, ref, 1, np.float32, np.float32)
    with pytest.raises(AssertionError, match="dtype"):
        assert_agrees(ref.astype(np.float64), ref, ref, 1, np.float32, np.float32)


def test_reference_conv_matches_direct_definition():
    # The reference itself, against the definition written out element by element.
    x, w = values(7, (1, 2, 5, 6), np.float64), values(8, (3, 2, 2, 3), np.float64)
    ref, _ = conv2d_ref(x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    for o in range(3):
        for i in range(ref.shape[2]):
            for j in range(ref.shape[3]):
                s = sum(
                    xp[0, c, 2 * i + p, j + 2 * q] * w[o, c, p, q]
                    for c in range(2) for p in range(2) for q in range(3)
                )
                assert abs(ref[0, o, i, j] - s) < 1e-12
