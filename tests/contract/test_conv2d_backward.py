"""conv2d_backward agrees with an explicit-loop float64 reference on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import xdev
from reference import conv2d_backward_ref, conv2d_ref
from strategies import conv_cases, fixed_conv_cases, supported_dtypes, values
from test_conv2d import put_x
from availability import require
from tolerance import assert_agrees, backward_K

ALL = ("x", "w", "bias")


def check_backward(dev, case, needs=ALL):
    dt = case["dtype"]
    seed = case["seed"]
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    x = values(seed, case["x_shape"], dt)
    w = values(seed + 1, case["w_shape"], dt)
    y_shape = conv2d_ref(x, w, **kw)[0].shape
    gy = values(seed + 3, y_shape, dt)
    g = xdev.conv2d_backward(
        xdev.asarray(gy, backend=dev.key), put_x(x, case["layout"], dev, seed),
        xdev.asarray(w, backend=dev.key), needs=needs, algorithm=case["algorithm"], **kw,
    )
    ref = conv2d_backward_ref(gy, x, w, **kw)
    Ks = backward_K(case["w_shape"], y_shape, case["groups"])
    acc = dev.acc_dtype(dt)
    for name, got in zip(ALL, g):
        if name not in needs:
            assert got is None, name
            continue
        assert got.algorithm in dev.conv_algorithms
        if case["algorithm"] != "auto":
            assert got.algorithm == case["algorithm"]
        r, r_abs = ref[name]
        assert_agrees(got.numpy(), r, r_abs, Ks[name], acc, dt, f"grad_{name} {case} on {dev.key}")
    return g


@st.composite
def _cases(draw, dev):
    case = draw(conv_cases(supported_dtypes(dev), dev.conv_algorithms))
    needs = draw(st.sampled_from([ALL, ALL, ("x",), ("w", "bias"), ("w",)]))
    return case, needs


def test_conv2d_backward_hypothesis(device):
    @settings(max_examples=25)
    @given(_cases(device))
    def run(case_needs):
        check_backward(device, *case_needs)

    run()


AWKWARD = [
    # (N, C, H, W), (O, C/g, kh, kw), stride, padding, dilation, groups
    ((2, 3, 11, 10), (4, 3, 2, 2), 3, 0, 1, 1),  # stride > kernel: pixels no tap reads
    ((1, 4, 12, 11), (5, 4, 3, 2), (1, 2), (2, 1), (2, 3), 1),  # dilation, padding pair
    ((2, 6, 9, 9), (9, 2, 3, 3), 2, 1, 1, 3),  # groups, strided
    ((1, 6, 8, 8), (12, 1, 3, 3), 1, 1, 1, 6),  # depthwise, multiplier 2
    ((2, 3, 9, 8), (4, 3, 4, 2), 1, "same", 1, 1),  # even kernel: asymmetric 'same'
    ((1, 2, 10, 9), (3, 2, 2, 3), 1, "same", (3, 2), 1),  # 'same' with dilation
    ((1, 4, 7, 7), (6, 4, 1, 1), 1, 0, 1, 1),  # 1x1
    ((1, 3, 9, 9), (2, 3, 3, 3), 2, "valid", 1, 1),  # rows past the last window get no gradient
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", AWKWARD)
def test_conv2d_backward_awkward(device, xs, ws, stride, padding, dilation, groups):
    for case in fixed_conv_cases(device, xs, ws, stride, padding, dilation, groups):
        check_backward(device, case)


def test_conv2d_backward_unbatched_and_needs(device):
    x = values(1, (3, 7, 8), np.float32)
    w = values(2, (4, 3, 3, 3), np.float32)
    gy = values(3, (4, 7, 8), np.float32)
    g = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w, padding=1)
    assert isinstance(g, xdev.Conv2dGrads)
    assert g.grad_x.shape == (3, 7, 8) and g.grad_w.shape == (4, 3, 3, 3) and g.grad_bias.shape == (4,)
    assert g.algorithm == g.grad_x.algorithm == g.grad_w.algorithm
    ref = conv2d_backward_ref(gy[None], x[None], w, padding=1)
    assert_agrees(g.grad_x.numpy(), ref["x"][0][0], ref["x"][1][0], 36, device.acc_dtype(np.float32),
                  np.float32, "unbatched grad_x")
    only = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w, padding=1, needs=("w",))
    assert only.grad_x is None and only.grad_bias is None
    np.testing.assert_array_equal(only.grad_w.numpy(), g.grad_w.numpy())
    none = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w, padding=1, needs=())
    assert none == (None, None, None) and none.algorithm is None


def test_conv2d_backward_zero_batch(device):
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = values(2, (4, 3, 3, 3), np.float32)
    gy = np.zeros((0, 4, 3, 3), np.float32)
    g = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w)
    assert g.grad_x.shape == (0, 3, 5, 5)
    np.testing.assert_array_equal(g.grad_w.numpy(), np.zeros((4, 3, 3, 3), np.float32))
    np.testing.assert_array_equal(g.grad_bias.numpy(), np.zeros(4, np.float32))


def test_conv2d_backward_promotes_like_forward(device):
    if np.dtype(np.float16) not in supported_dtypes(device):
        pytest.skip(f"{device.key} has no float16")
    x = values(1, (1, 2, 6, 6), np.float16)
    w = values(2, (3, 2, 3, 3), np.float32)
    gy = values(3, (1, 3, 4, 4), np.float16)
    g = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w)
    assert {a.dtype for a in g} == {np.dtype(np.float32)}
    assert xdev.conv2d(xdev.asarray(x, backend=device.key), w).dtype == g.grad_x.dtype


def test_conv2d_backward_errors(device):
    x = xdev.asarray(values(1, (2, 3, 8, 8), np.float32), backend=device.key)
    w = values(2, (4, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"grad_y must have the forward output's shape \(2, 4, 6, 6\).*received shape \(2, 4, 8, 8\)"):
        xdev.conv2d_backward(np.ones((2, 4, 8, 8), np.float32), x, w)
    with pytest.raises(ValueError, match=r"\(4, 8, 8\)"):  # unbatched x wants an unbatched grad_y
        xdev.conv2d_backward(np.ones((1, 4, 8, 8), np.float32), x[0], w, padding=1)
    gy = np.ones((2, 4, 6, 6), np.float32)
    with pytest.raises(ValueError, match=r"subset of \('x', 'w', 'bias'\); received \('x', 'input'\)"):
        xdev.conv2d_backward(gy, x, w, needs=("x", "input"))
    with pytest.raises(ValueError, match=r"choose one of auto"):
        xdev.conv2d_backward(gy, x, w, algorithm="winograd")
    with pytest.raises(ValueError, match=r"groups=2 must divide the input channels"):
        xdev.conv2d_backward(gy, x, w, groups=2)
    with pytest.raises(TypeError, match=r"gradients in float16, float32 or float64; the operands promote to int32"):
        xdev.conv2d_backward(gy.astype(np.int32), x.numpy().astype(np.int16), w.astype(np.int32), backend=device.key)


@pytest.mark.parametrize("big", [2**31, 2**59, 2**63])
def test_huge_stride_and_dilation_compute_like_the_smallest_equivalent(device, big):
    """A stride past the last window, or a dilation of a 1-tap axis, changes nothing: both
    passes compute what the smallest equivalent values give (they overflowed the kernels'
    int32 arguments, and NumPy's strides from 2**59 on)."""
    x = values(1, (2, 3, 5, 7), np.float32)
    w = values(2, (4, 3, 1, 3), np.float32)
    big_kw = dict(stride=(big, 2), padding=(1, 0), dilation=(big, 2))
    small_kw = dict(stride=(7, 2), padding=(1, 0), dilation=(1, 2))  # Ho = 1 from stride 7 on
    y, y_abs = conv2d_ref(x, w, **small_kw)
    got = xdev.conv2d(xdev.asarray(x, backend=device.key), w, **big_kw)
    acc = device.acc_dtype(np.float32)
    assert_agrees(got.numpy(), y, y_abs, 9, acc, np.float32, f"conv2d stride {big} on {device.key}")
    gy = values(3, y.shape, np.float32)
    g = xdev.conv2d_backward(gy, xdev.asarray(x, backend=device.key), w, **big_kw)
    ref = conv2d_backward_ref(gy, x, w, **small_kw)
    Ks = backward_K(w.shape, y.shape, 1)
    for name, grad in zip(ALL, g):
        assert_agrees(grad.numpy(), *ref[name], Ks[name], acc, np.float32, f"grad_{name} stride {big}")


def test_padding_past_the_32_bit_range_is_the_same_value_error_everywhere(device):
    x = xdev.asarray(np.ones((1, 1, 3, 3), np.float32), backend=device.key)
    w = np.ones((1, 1, 1, 1), np.float32)
    for pad in (2**31, 2**63):
        with pytest.raises(ValueError, match=rf"padding {pad},{pad},{pad},{pad} .* at most 2147483647 "):
            xdev.conv2d(x, w, padding=pad, stride=2**40)
        with pytest.raises(ValueError, match=r"at most 2147483647 \(2\*\*31-1\) pixels per side"):
            xdev.conv2d_backward(np.ones((1, 1, 1, 1), np.float32), x, w, padding=(0, pad), stride=2**40)


def test_opencl_backward_blocks_and_chunks(monkeypatch):
    """OpenCL gemm: image blocks (partial grad_w added up), reduction chunks, strided grad_x."""
    dev = require("opencl")
    import xdev.backends.opencl.backward as bw

    monkeypatch.setattr(bw, "COLS_BUDGET_BYTES", 2000)  # one image per block
    monkeypatch.setattr(bw, "CHUNK_PIXELS", 20)  # several reduction chunks per block
    monkeypatch.setattr(bw, "ROWS_MIN_PIXELS", 1 << 40)  # grad_w on the packed GEMM
    for stride, padding in ((1, 1), (2, 1), (1, "same")):
        check_backward(dev, dict(
            x_shape=(3, 4, 9, 10), w_shape=(6, 2, 3, 2), stride=stride, padding=padding, dilation=1,
            groups=2, algorithm="gemm", dtype=np.dtype(np.float32), layout="strided", seed=5,
        ))


@pytest.mark.parametrize("padding,dilation", [(1, 1), ("same", (2, 1)), ((0, 2), 1)])
def test_grad_x_as_forward_convolution(device, padding, dilation):
    """Stride 1, 16 channels, 420 pixels: numpy and OpenCL compute grad_x with their forward kernels."""
    case = dict(x_shape=(1, 16, 20, 21), w_shape=(6, 8, 3, 4), stride=1, padding=padding, dilation=dilation,
                groups=2, algorithm="gemm", layout="nhwc", seed=9)
    if device.backend == "opencl":
        import xdev.backends.opencl.backward as bw
        from xdev.contract import conv_params

        assert bw._dgrad_forward_pays(conv_params(case["x_shape"], case["w_shape"], None, 1, padding, dilation, 2))
    for dt in supported_dtypes(device):
        check_backward(device, {**case, "dtype": dt}, needs=("x",))


def test_conv2d_backward_views_with_offsets(device):
    """grad_y and w as contiguous views that start inside their buffers (b[1:], b[1])."""

    dt = np.dtype(np.float32)
    x = values(21, (1, 2, 5, 6), dt)
    wb = values(22, (2, 3, 2, 3, 3), dt)
    gyb = values(23, (2, 3, 3, 4), dt)
    ref = conv2d_backward_ref(gyb[1:], x, wb[1])
    Ks = backward_K(wb.shape[1:], gyb[1:].shape, 1)
    for algo in device.conv_algorithms:
        g = xdev.conv2d_backward(xdev.asarray(gyb, backend=device.key)[1:], xdev.asarray(x, backend=device.key),
                                 xdev.asarray(wb, backend=device.key)[1], algorithm=algo)
        for name, got in zip(ALL, g):
            r, r_abs = ref[name]
            assert_agrees(got.numpy(), r, r_abs, Ks[name], device.acc_dtype(dt), dt, f"grad_{name} {algo} on {device.key}")


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", AWKWARD)
def test_opencl_grad_w_rows(monkeypatch, xs, ws, stride, padding, dilation, groups):
    """OpenCL gemm's grad_w along output rows (CPU devices, width stride 1), on every shape:
    row tails (Wo not a multiple of the vector width), edge tiles, groups, dilation, dtypes,
    reduction blocks."""
    dev = require("opencl")
    import xdev.backends.opencl.backward as bw

    monkeypatch.setattr(bw, "ROWS_MIN_PIXELS", 0)
    for block in (0, 7):  # the whole reduction in one block; blocks of a row or two, partials added
        monkeypatch.setattr(bw, "ROWS_BLOCK_PIXELS", block)
        for dt in supported_dtypes(dev):
            check_backward(dev, dict(
                x_shape=xs, w_shape=ws, stride=stride, padding=padding, dilation=dilation, groups=groups,
                algorithm="gemm", dtype=dt, layout="strided", seed=sum(xs) + 7,
            ), needs=("w",))


@pytest.mark.parametrize("rows_min", [0, 1 << 40])
def test_opencl_grad_w_non_finite_input_stays_out_of_unread_taps(monkeypatch, rows_min):
    """An inf in the input's last column is read by taps j >= 1 only: the j = 0 taps of
    grad_w stay finite (grad_w_rows masks the lanes past a row instead of multiplying by 0)."""
    dev = require("opencl")
    import xdev.backends.opencl.backward as bw

    monkeypatch.setattr(bw, "ROWS_MIN_PIXELS", rows_min)
    x = values(31, (1, 2, 6, 20), np.dtype(np.float32))
    x[0, 0, 2, 19] = np.inf
    w = values(32, (3, 2, 3, 3), np.dtype(np.float32))
    gy = values(33, (1, 3, 4, 18), np.dtype(np.float32))
    got = xdev.conv2d_backward(xdev.asarray(gy, backend=dev.key), xdev.asarray(x, backend=dev.key),
                               xdev.asarray(w, backend=dev.key), needs=("w",)).grad_w.numpy()
    assert np.isfinite(got[:, :, :, 0]).all()
    assert np.isfinite(got[:, 1]).all()
    assert not np.isfinite(got[:, 0, :, 1:]).all()


# The NumPy backend accumulates grad_w in two layouts (by size): both agree with the reference.
# (x, w, stride, padding, dilation, groups): several image/row blocks, groups, strides
NUMPY_GRAD_W_LAYERS = [
    ((3, 6, 9, 7), (8, 3, 3, 2), (2, 1), 1, 1, 2),
    ((2, 4, 6, 6), (5, 4, 3, 3), 1, "same", (1, 2), 1),
]


@pytest.mark.parametrize("threshold", [1, 1 << 40], ids=["untransposed", "transposed"])
@pytest.mark.parametrize("layer", NUMPY_GRAD_W_LAYERS)
def test_numpy_grad_w_layouts(monkeypatch, threshold, layer):
    import xdev.backends.numpy.backward as nb

    monkeypatch.setattr(nb, "DIRECT_W_ELEMS", threshold)
    # a small im2col budget so the reduction runs over several blocks (the += path too)
    blocks, counts = nb.blocks, []

    def small_blocks(p, itemsize, budget):
        out = list(blocks(p, itemsize, 512))
        counts.append(len(out))
        return out

    monkeypatch.setattr(nb, "blocks", small_blocks)
    dev = require("numpy")
    for case in fixed_conv_cases(dev, *layer):
        check_backward(dev, case, needs=("w", "bias"))
    assert counts and min(counts) > 1
