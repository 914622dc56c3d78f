"""Hypothesis strategies: shapes, dtypes, layouts and conv parameters."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

import xdev

# Sizes that are 1, prime, just off powers of two, and no multiple of any tile.
ODD_SIZES = [1, 2, 3, 5, 7, 13, 17, 31, 33, 47, 63, 65, 97, 129]
sizes = st.one_of(st.integers(1, 24), st.sampled_from(ODD_SIZES))


def supported_dtypes(dev) -> list[np.dtype]:
    out = []
    for dt in (np.float16, np.float32, np.float64):
        try:
            dev.check_dtype(np.dtype(dt))
            out.append(np.dtype(dt))
        except TypeError:
            pass
    return out


def values(seed: int, shape, dtype) -> np.ndarray:
    """Random normal (never subnormal) numbers of mixed magnitude and sign, some zeros.

    |v| in [2^-6, 4): products and sums stay far from float16 overflow and underflow.
    Integer and bool dtypes: int_values.
    """
    if np.dtype(dtype).kind in "iub":
        return int_values(seed, shape, dtype)
    rng = np.random.default_rng(seed)
    mant = 1.0 + rng.random(shape)
    expo = rng.integers(-6, 2, shape)
    v = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * mant * np.exp2(expo)
    v = np.where(rng.random(shape) < 0.05, 0.0, v)
    return np.asarray(v).astype(dtype)


EXACT_DTYPES = [np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                                        np.uint32, np.uint64, np.bool_)]


def int_values(seed: int, shape, dtype) -> np.ndarray:
    """Random integers over the dtype's whole range (so products and sums wrap around), a
    tenth of them small (|v| <= 3) and some zeros; bool: True or False, half each."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    info = np.iinfo(dtype)
    v = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    small = rng.integers(max(info.min, -3), 4, size=shape, dtype=dtype)
    v = np.where(rng.random(shape) < 0.1, small, v)
    return np.where(rng.random(shape) < 0.05, dtype.type(0), v).astype(dtype)


def supported_exact_dtypes(dev) -> list[np.dtype]:
    """The integer and bool dtypes `dev` computes in."""
    out = []
    for dt in EXACT_DTYPES:
        try:
            dev.check_dtype(dt)
            out.append(dt)
        except TypeError:
            pass
    return out


LAYOUTS = ["contiguous", "transposed", "strided"]


def place(host: np.ndarray, layout: str, backend: str, seed: int) -> xdev.Array:
    """Put `host` on the device as a contiguous array, a transposed view or a strided view."""
    if layout == "transposed" and host.ndim >= 2:
        return xdev.asarray(np.ascontiguousarray(np.swapaxes(host, -1, -2)), backend=backend).mT
    if layout == "strided" and host.ndim >= 1:
        # Every other element of the last two axes of a larger array, with junk in between.
        big_shape = host.shape[:-2] + tuple(2 * d + 1 for d in host.shape[-2:])
        big = values(seed + 1, big_shape, host.dtype)
        idx = (Ellipsis,) + tuple(slice(1, 1 + 2 * d, 2) for d in host.shape[-2:])
        big[idx] = host
        return xdev.asarray(big, backend=backend)[idx]
    return xdev.asarray(host, backend=backend)


def transposed_at_strided(dtype, backend: str):
    """(a, b, xa, xb): a (3, 37, 29) on the device as a transposed view, b (29, 41) as a view
    every other row and column of a larger array; both non-contiguous paths of a GEMM."""
    a, b = values(1, (3, 37, 29), dtype), values(2, (29, 41), dtype)
    xa = xdev.asarray(np.ascontiguousarray(np.swapaxes(a, 1, 2)), backend=backend).mT
    big = values(3, (60, 90), dtype)
    big[1::2, ::2][:29, :41] = b
    xb = xdev.asarray(big, backend=backend)[1::2, ::2][:29, :41]
    return a, b, xa, xb


def fixed_conv_cases(dev, xs, ws, stride, padding, dilation, groups, **extra):
    """One fixed layer's case dicts (as conv_cases draws them), one per dtype and conv
    algorithm of `dev`; contiguous, seeded by the shapes; `extra` adds keys (bias=True)."""
    for dt in supported_dtypes(dev):
        for algo in dev.conv_algorithms:
            yield dict(x_shape=xs, w_shape=ws, stride=stride, padding=padding, dilation=dilation,
                       groups=groups, algorithm=algo, dtype=dt, layout="contiguous",
                       seed=sum(xs) + sum(ws), **extra)


@st.composite
def matmul_cases(draw, dtypes):
    """(a_shape, b_shape, dtype, layout_a, layout_b, seed)."""
    dt = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(["2d", "2d", "batched", "broadcast", "vec_a", "vec_b", "vec_both", "zero"]))
    M, K, N = draw(sizes), draw(sizes), draw(sizes)
    if kind == "zero":
        which = draw(st.sampled_from("MKN"))
        M, K, N = (0 if which == "M" else M), (0 if which == "K" else K), (0 if which == "N" else N)
    a_shape, b_shape = (M, K), (K, N)
    if kind == "batched":
        batch = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
        a_shape, b_shape = batch + a_shape, batch + b_shape
    elif kind == "broadcast":
        batch = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
        mask_a = draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
        ba = tuple(1 if m else d for d, m in zip(batch, mask_a))
        bb = tuple(d if m else 1 for d, m in zip(batch, mask_a))
        drop = draw(st.integers(0, len(bb)))  # b may also have fewer batch dims
        a_shape, b_shape = ba + a_shape, bb[drop:] + b_shape
    elif kind == "vec_a":
        a_shape = (K,)
    elif kind == "vec_b":
        b_shape = (K,)
    elif kind == "vec_both":
        a_shape, b_shape = (K,), (K,)
    la = draw(st.sampled_from(LAYOUTS))
    lb = draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2**31 - 1))
    return a_shape, b_shape, dt, la, lb, seed


@st.composite
def conv_cases(draw, dtypes, algorithms):
    """Keyword arguments for conv2d plus shapes, dtype, layout and seed."""
    dt = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(["plain", "plain", "grouped", "depthwise"]))
    if kind == "depthwise":
        C = draw(st.integers(1, 8))
        groups, Cg, O = C, 1, C * draw(st.integers(1, 2))
    else:
        groups = 1 if kind == "plain" else draw(st.integers(2, 3))
        Cg = draw(st.integers(1, 6))
        C, O = Cg * groups, groups * draw(st.integers(1, 7))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    pad_choice = draw(st.sampled_from(["int", "pair", "valid", "same"]))
    if pad_choice == "same" and stride not in (1, (1, 1)):
        pad_choice = "int"
    padding = {
        "int": draw(st.integers(0, 3)),
        "pair": (draw(st.integers(0, 3)), draw(st.integers(0, 3))),
        "valid": "valid",
        "same": "same",
    }[pad_choice]
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    if isinstance(padding, int):
        ph, pw = padding, padding
    elif isinstance(padding, tuple):
        ph, pw = padding
    else:
        ph = pw = 0  # 'same' and 'valid': no padding needed for a legal minimum size
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + draw(st.integers(0, 12))
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + draw(st.integers(0, 12))
    N = draw(st.sampled_from([0, 1, 1, 2, 3]))
    return dict(
        x_shape=(N, C, H, W),
        w_shape=(O, Cg, kh, kw),
        bias=draw(st.booleans()),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        algorithm=draw(st.sampled_from(["auto", *algorithms])),
        dtype=dt,
        layout=draw(st.sampled_from(["contiguous", "strided", "nhwc"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )
