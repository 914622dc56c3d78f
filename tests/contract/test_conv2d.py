"""conv2d agrees with an explicit-loop float64 reference on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import xdev
from reference import conv2d_ref
from strategies import conv_cases, fixed_conv_cases, supported_dtypes, values
from tolerance import assert_agrees


def put_x(x: np.ndarray, layout: str, dev, seed: int) -> xdev.Array:
    if layout == "strided":  # every other column of a wider image
        big = values(seed + 11, x.shape[:-1] + (2 * x.shape[-1] + 1,), x.dtype)
        big[..., 1::2] = x
        return xdev.asarray(big, backend=dev.key)[..., 1::2]
    if layout == "nhwc":  # channels-last data viewed as NCHW
        return xdev.asarray(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), backend=dev.key).transpose(0, 3, 1, 2)
    return xdev.asarray(x, backend=dev.key)


def check_conv(dev, case):
    dt = case["dtype"]
    seed = case["seed"]
    x = values(seed, case["x_shape"], dt)
    w = values(seed + 1, case["w_shape"], dt)
    b = values(seed + 2, (case["w_shape"][0],), dt) if case["bias"] else None
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    y = xdev.conv2d(
        put_x(x, case["layout"], dev, seed),
        xdev.asarray(w, backend=dev.key),
        None if b is None else xdev.asarray(b, backend=dev.key),
        algorithm=case["algorithm"],
        **kw,
    )
    ref, ref_abs = conv2d_ref(x, w, b, **kw)
    O, Cg, kh, kwid = case["w_shape"]
    K = Cg * kh * kwid + (1 if b is not None else 0)
    assert y.algorithm in dev.conv_algorithms
    if case["algorithm"] != "auto":
        assert y.algorithm == case["algorithm"]
    assert_agrees(y.numpy(), ref, ref_abs, K, dev.acc_dtype(dt), dt, f"conv2d {case} on {dev.key}")


@st.composite
def _cases(draw, dev):
    return draw(conv_cases(supported_dtypes(dev), dev.conv_algorithms))


def test_conv2d_hypothesis(device):
    @given(_cases(device))
    def run(case):
        check_conv(device, case)

    run()


VGG_LIKE = [
    # (N, C, H, W), (O, C/g, kh, kw), stride, padding, dilation, groups
    ((1, 3, 32, 32), (16, 3, 3, 3), 1, 1, 1, 1),
    ((2, 16, 17, 19), (24, 16, 3, 3), 1, 1, 1, 1),
    ((1, 8, 15, 15), (8, 1, 3, 3), 1, 1, 1, 8),  # depthwise
    ((1, 8, 15, 15), (16, 1, 3, 3), 2, 1, 1, 8),  # depthwise, multiplier 2, strided
    ((2, 6, 11, 13), (9, 2, 3, 5), (2, 1), "valid", (1, 2), 3),
    ((1, 4, 9, 9), (5, 4, 1, 1), 1, 0, 1, 1),  # 1x1
    ((1, 4, 10, 8), (3, 4, 4, 4), 1, "same", 1, 1),  # even kernel: asymmetric 'same'
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", VGG_LIKE)
def test_conv2d_fixed(device, xs, ws, stride, padding, dilation, groups):
    for case in fixed_conv_cases(device, xs, ws, stride, padding, dilation, groups, bias=True):
        check_conv(device, case)


def test_conv2d_unbatched_input(device):
    x = values(1, (3, 7, 8), np.float32)
    w = values(2, (4, 3, 3, 3), np.float32)
    y = xdev.conv2d(xdev.asarray(x, backend=device.key), w, padding=1)
    assert y.shape == (4, 7, 8)
    ref, ref_abs = conv2d_ref(x[None], w, padding=1)
    assert_agrees(y.numpy(), ref[0], ref_abs[0], 27, device.acc_dtype(np.float32), np.float32, "unbatched")


def test_conv2d_zero_batch(device):
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = values(2, (4, 3, 3, 3), np.float32)
    y = xdev.conv2d(xdev.asarray(x, backend=device.key), w)
    assert y.shape == (0, 4, 3, 3)
    assert y.numpy().shape == (0, 4, 3, 3)
