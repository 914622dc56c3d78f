"""Integer and bool data: NumPy's rule on every backend (docs/index.md, "dtypes").

An operation computes in numpy.result_type of its operands; integer results are exact
and wrap around modulo 2**bits of their type, as numpy.matmul's do; bool matmul is
NumPy's logical one (or of ands). Checked for exact equality against Python-integer
references (tests/reference.py: matmul_exact, conv2d_exact) with values over each type's
whole range, so that products and sums do wrap.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import xdev
from reference import conv2d_exact, conv2d_ref, matmul_exact, matmul_ref, wrap
from test_conv2d import put_x
from strategies import (EXACT_DTYPES, conv_cases, int_values, matmul_cases, place, supported_dtypes,
                        supported_exact_dtypes)
from tolerance import assert_agrees


def _exact_dtypes(dev) -> list[np.dtype]:
    dts = supported_exact_dtypes(dev)
    if not dts:
        pytest.skip(f"{dev.key} computes in no integer dtype")
    return dts


def _equal(y: xdev.Array, ref: np.ndarray, what: str) -> None:
    got = y.numpy()
    assert got.dtype == ref.dtype and got.shape == ref.shape, f"{what}: {got.dtype}{got.shape} vs {ref.dtype}{ref.shape}"
    bad = np.argwhere(got != ref)
    assert bad.size == 0, f"{what}: {len(bad)} of {got.size} elements differ, first at {tuple(bad[0])}: " \
                          f"{got[tuple(bad[0])]!r} != {ref[tuple(bad[0])]!r}"


def check_matmul(dev, a_shape, b_shape, dt, la, lb, seed):
    a, b = int_values(seed, a_shape, dt), int_values(seed + 7, b_shape, dt)
    y = xdev.matmul(place(a, la, dev.key, seed), place(b, lb, dev.key, seed + 3))
    assert y.device == dev.key
    _equal(y, matmul_exact(a, b, dt), f"matmul {a_shape}({la}) @ {b_shape}({lb}) {dt} on {dev.key}")
    # NumPy itself agrees with the exact reference (the rule is NumPy's).
    if a.size * b.size < 10**6:
        assert np.array_equal(np.matmul(a, b), matmul_exact(a, b, dt))


def test_integer_matmul_hypothesis(device):
    @given(matmul_cases(_exact_dtypes(device)))
    def run(case):
        check_matmul(device, *case)

    run()


@pytest.mark.parametrize("dt", EXACT_DTYPES, ids=str)
@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 0, 2), (7, 13, 5), (64, 65, 33), (130, 97, 129)])
def test_integer_matmul_fixed_shapes_wrap_around(device, dt, M, K, N):
    if dt not in _exact_dtypes(device):
        pytest.skip(f"{device.key} has no {dt}")
    check_matmul(device, (M, K), (K, N), dt, "contiguous", "transposed", M * 1000 + K * 10 + N)


def test_integer_overflow_wraps_as_numpy_does(device):
    _exact_dtypes(device)
    i32 = np.array([[2**31 - 1, 1]], np.int32)
    y = xdev.matmul(xdev.asarray(i32, backend=device.key), np.array([[2], [1]], np.int32))
    assert y.dtype == np.int32 and y.numpy().tolist() == [[-1]]  # (2**32 - 1) mod 2**32, signed
    u8 = np.array([[200, 100]], np.uint8)
    y = xdev.matmul(xdev.asarray(u8, backend=device.key), np.array([[2], [1]], np.uint8))
    assert y.dtype == np.uint8 and y.numpy().tolist() == [[244]]  # 500 mod 256
    big = np.array([[2**62, 2**62]], np.int64)
    y = xdev.matmul(xdev.asarray(big, backend=device.key), np.array([[2], [2]], np.int64))
    assert y.numpy().tolist() == [[0]]  # 2**64 mod 2**64


def test_python_lists_follow_numpy_asarray(device):
    _exact_dtypes(device)
    with xdev.use_backend(device.key):
        y = xdev.matmul([[1, 2], [3, 4]], [[5], [6]])
        assert y.dtype == np.asarray([1]).dtype and y.numpy().tolist() == [[17], [39]]
        assert y.device == device.key
        yb = xdev.matmul([[True, False], [False, False]], [[True], [True]])
        assert yb.dtype == np.bool_ and yb.numpy().tolist() == [[True], [False]]
        if np.float64 in supported_dtypes(device):
            yf = xdev.matmul([[1, 2.5]], [[2], [2]])  # ints and floats in one list: float64
            assert yf.dtype == np.float64 and yf.numpy().tolist() == [[7.0]]
    with pytest.raises(TypeError, match=r"received data of dtype object"):
        xdev.matmul([[2**70]], [[1]], backend=device.key)  # beyond int64: NumPy makes an object array


# NumPy's promotion table for pairs of operands (numpy.result_type), exact results and float ones.
PAIRS = [(np.int8, np.int32), (np.uint8, np.int8), (np.uint32, np.int32), (np.bool_, np.int16),
         (np.bool_, np.uint8), (np.int32, np.uint64), (np.int8, np.float16), (np.int32, np.float32),
         (np.uint16, np.float32), (np.int64, np.float64), (np.bool_, np.float32), (np.uint64, np.int64)]


@pytest.mark.parametrize("da,db", PAIRS, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("where", ["device", "host"])
def test_mixed_dtypes_promote_as_numpy(device, da, db, where):
    """Operands of two dtypes compute in numpy.result_type, converted on the device when they
    are device arrays (exact for integer results; floats within the suite's bound)."""
    _exact_dtypes(device)
    out = np.result_type(da, db)
    try:
        device.check_dtype(out)
    except TypeError as e:
        pytest.skip(f"{device.key} has no {out}: {e}")
    a = int_values(1, (5, 6), da) if np.dtype(da).kind in "iub" else np.random.default_rng(1).uniform(-4, 4, (5, 6)).astype(da)
    b = int_values(2, (6, 3), db) if np.dtype(db).kind in "iub" else np.random.default_rng(2).uniform(-4, 4, (6, 3)).astype(db)
    if out.kind == "f":  # keep float results finite and within float16: small integers
        a = a % 7 if a.dtype.kind in "iu" else a
        b = b % 7 if b.dtype.kind in "iu" else b
    xa, xb = (xdev.asarray(a, backend=device.key), xdev.asarray(b, backend=device.key)) if where == "device" else (a, b)
    y = xdev.matmul(xa, xb, backend=device.key)
    assert y.dtype == out
    if out.kind in "iub":
        _equal(y, matmul_exact(a.astype(out), b.astype(out), out), f"{da} @ {db}")
    else:
        ref, ref_abs = matmul_ref(a.astype(out), b.astype(out))
        assert_agrees(y.numpy(), ref, ref_abs, 6, device.acc_dtype(out), out, f"{da} @ {db}")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # int -> float16: inf, as NumPy
@pytest.mark.parametrize("src", EXACT_DTYPES + [np.dtype(t) for t in (np.float16, np.float32, np.float64)], ids=str)
def test_asarray_converts_on_the_device_as_numpy_astype(device, src):
    """xdev.asarray(array, dtype=...) on the device: integers wrap (negative to unsigned,
    wide to narrow), bool is nonzero, integers to floats round to nearest, floats to
    integers truncate toward zero (values in range: NumPy leaves out-of-range undefined)."""
    dts = _exact_dtypes(device)
    targets = [d for d in dts + supported_dtypes(device) if d != src]
    try:
        device.check_dtype(np.dtype(src))
    except TypeError:
        pytest.skip(f"{device.key} has no {src}")
    host = int_values(5, (3, 17), src) if np.dtype(src).kind in "iub" else \
        np.random.default_rng(5).uniform(-100, 100, (3, 17)).astype(src)
    x = xdev.asarray(host, backend=device.key)[:, 1::2]  # a strided view: the copy reads strides
    for dst in targets:
        if np.dtype(src).kind == "f" and dst.kind in "iu":
            if dst.kind == "u":
                continue  # negative floats to unsigned: undefined in NumPy (and C)
            lim = np.iinfo(dst)
            if not (host[:, 1::2].min() >= lim.min and host[:, 1::2].max() <= lim.max):
                continue
        want = host[:, 1::2].astype(dst)
        got = xdev.asarray(x, dtype=dst).numpy()
        assert got.dtype == dst
        assert np.array_equal(got, want, equal_nan=False), f"{src} -> {dst} on {device.key}: {got} != {want}"


def _int_algorithms(dev) -> list[str]:
    return list(dev.exact_conv_algorithms)


def check_conv(dev, case):
    dt, seed = case["dtype"], case["seed"]
    x = int_values(seed, case["x_shape"], dt)
    w = int_values(seed + 1, case["w_shape"], dt)
    b = int_values(seed + 2, (case["w_shape"][0],), dt) if case["bias"] else None
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    y = xdev.conv2d(put_x(x, case["layout"], dev, seed), xdev.asarray(w, backend=dev.key),
                    None if b is None else xdev.asarray(b, backend=dev.key), algorithm=case["algorithm"], **kw)
    assert y.algorithm in dev.exact_conv_algorithms
    _equal(y, conv2d_exact(x, w, b, dtype=dt, **kw), f"conv2d {case} on {dev.key}")


def test_integer_conv2d_hypothesis(device):
    @given(conv_cases(_exact_dtypes(device), _int_algorithms(device)))
    def run(case):
        check_conv(device, case)

    run()


@pytest.mark.parametrize("dt", EXACT_DTYPES, ids=str)
def test_integer_conv2d_fixed_layers(device, dt):
    if dt not in _exact_dtypes(device):
        pytest.skip(f"{device.key} has no {dt}")
    for xs, ws, stride, padding, dilation, groups in [
        ((2, 3, 17, 15), (8, 3, 3, 3), 1, 1, 1, 1),
        ((1, 8, 12, 11), (8, 1, 3, 3), 2, 1, 1, 8),
        ((2, 6, 11, 13), (9, 2, 3, 5), (2, 1), "valid", (1, 2), 3),
        ((1, 4, 9, 9), (5, 4, 1, 1), 1, 0, 1, 1),
        ((1, 4, 10, 8), (3, 4, 4, 4), 1, "same", 1, 1),
        ((0, 4, 6, 6), (3, 4, 3, 3), 1, 1, 1, 1),
    ]:
        for algo in ["auto", *_int_algorithms(device)]:
            check_conv(device, dict(x_shape=xs, w_shape=ws, stride=stride, padding=padding, dilation=dilation,
                                    groups=groups, bias=True, algorithm=algo, dtype=dt, layout="nhwc",
                                    seed=sum(xs) + sum(ws)))


def test_integer_conv2d_promotes_and_refuses_float_only_algorithms(device):
    dts = _exact_dtypes(device)
    x = int_values(3, (1, 2, 6, 6), np.int8)
    w = int_values(4, (3, 2, 3, 3), np.int32)
    b = int_values(5, (3,), np.uint16)
    y = xdev.conv2d(x, w, b, padding=1, backend=device.key)
    assert y.dtype == np.int32 and np.int32 in dts
    _equal(y, conv2d_exact(x, w, b, padding=1), "int8 x, int32 w, uint16 bias")
    if np.float64 in supported_dtypes(device):
        xf = (x % 5).astype(np.float32)
        yf = xdev.conv2d(xf, w % 5, padding=1, backend=device.key)
        assert yf.dtype == np.float64  # float32 with int32: float64 (with int8 it is float32)
        ref, ref_abs = conv2d_ref(xf.astype(np.float64), (w % 5).astype(np.float64), padding=1)
        assert_agrees(yf.numpy(), ref, ref_abs, 18, device.acc_dtype(np.float64), np.float64, "mixed")
    for algo in device.conv_algorithms:
        if algo not in device.exact_conv_algorithms:
            with pytest.raises(ValueError, match=rf"conv2d algorithm {algo!r} has no int32 kernels on "
                                                 rf"{device.key} .*{device.exact_conv_algorithms[0]}"):
                xdev.conv2d(x, w, padding=1, algorithm=algo, backend=device.key)


def test_conv2d_backward_refuses_integers(device):
    _exact_dtypes(device)
    x = int_values(1, (1, 2, 5, 5), np.int32)
    w = int_values(2, (3, 2, 3, 3), np.int32)
    with pytest.raises(TypeError, match=r"gradients in float16, float32 or float64; the operands promote to int32"):
        xdev.conv2d_backward(np.ones((1, 3, 3, 3), np.int32), x, w, backend=device.key)


def test_reference_wraps_as_numpy():
    """The reference's wrap-around is NumPy's own (for the test's own sake)."""
    for dt in EXACT_DTYPES:
        a, b = int_values(1, (4, 9), dt), int_values(2, (9, 3), dt)
        assert np.array_equal(matmul_exact(a, b, dt), np.matmul(a, b))
    assert wrap(np.array([2**63, -(2**63) - 1], dtype=object), np.int64).tolist() == [-(2**63), 2**63 - 1]
