"""The one numeric-agreement check of the suite (design: worst-case bound, never tuned).

With ``XDEV_TEST_ERROR_LOG=FILE`` every check also appends one JSON line to FILE (what was
checked, K, the dtypes, and its worst error / bound): how close the suite's results come to
the bound, per numeric mode (bench/cuda_targets.py summarizes it for docs/cuda.md).
"""
from __future__ import annotations

import json
import os

import numpy as np

UNIT_ROUNDOFF = {
    np.dtype(np.float16): 2.0**-11,
    np.dtype(np.float32): 2.0**-24,
    np.dtype(np.float64): 2.0**-53,
}


def bound(ref_abs: np.ndarray, ref: np.ndarray, K: int, acc_dtype, out_dtype) -> np.ndarray:
    """(K + 2) * u_acc * (|a| . |b|) + u_out * |ref| + tiny."""
    u_acc = UNIT_ROUNDOFF[np.dtype(acc_dtype)]
    u_out = UNIT_ROUNDOFF[np.dtype(out_dtype)]
    tiny = float(np.finfo(np.dtype(out_dtype)).smallest_subnormal)
    return (K + 2) * u_acc * ref_abs + u_out * np.abs(ref) + tiny


def assert_agrees(y, ref, ref_abs, K: int, acc_dtype, out_dtype, what: str = "") -> None:
    """Fail unless every element of y is within the bound of the float64 reference."""
    y = np.asarray(y)
    assert y.shape == ref.shape, f"{what}: shape {y.shape}, expected {ref.shape}"
    assert y.dtype == np.dtype(out_dtype), f"{what}: dtype {y.dtype}, expected {np.dtype(out_dtype)}"
    err = np.abs(y.astype(np.float64) - ref)
    lim = bound(ref_abs, ref, K, acc_dtype, out_dtype)
    bad = ~(err <= lim)  # NaN and inf fail too
    _log(what, K, acc_dtype, out_dtype, err, lim)
    if bad.any():
        idx = np.argwhere(bad)
        first = tuple(int(i) for i in idx[0])
        ratio = np.nanmax(np.where(bad, err / lim, 0))
        raise AssertionError(
            f"{what}: {bad.sum()} of {y.size} elements outside the bound (K={K}, "
            f"acc={np.dtype(acc_dtype)}, out={np.dtype(out_dtype)}); first at {first}: "
            f"got {y[first]!r}, reference {ref[first]!r}, bound {lim[first]:.3g}; "
            f"worst error/bound {ratio:.3g}"
        )


def backward_K(w_shape, y_shape, groups: int) -> dict[str, int]:
    """Reduction length per conv2d gradient (the design's K per gradient, for ``bound``).

    grad_x sums O/groups * kH * kW products; grad_w sums N * Ho * Wo products; grad_bias
    sums N * Ho * Wo values.
    """
    O, _, kh, kw = w_shape
    N, _, Ho, Wo = y_shape
    return {"x": O // groups * kh * kw, "w": N * Ho * Wo, "bias": N * Ho * Wo}


def assert_conv_agrees(y, x, w, b, case, out_dtype, what: str = "") -> None:
    """A conv2d result against the float64 loop reference; ``case`` is (xs, ws, stride,
    padding, dilation, groups); K = C/groups*kH*kW, plus one with a bias; float16
    accumulates in float32 (the CUDA backend's rule, shared by its emulator tests)."""
    from reference import conv2d_ref

    xs, ws, stride, padding, dilation, groups = case
    ref, ref_abs = conv2d_ref(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    K = ws[1] * ws[2] * ws[3] + (1 if b is not None else 0)
    acc = np.dtype(np.float32) if out_dtype == np.float16 else out_dtype
    assert_agrees(y, ref, ref_abs, K, acc, out_dtype, what)


def _log(what: str, K: int, acc_dtype, out_dtype, err: np.ndarray, lim: np.ndarray) -> None:
    path = os.environ.get("XDEV_TEST_ERROR_LOG")
    if not path or err.size == 0:
        return
    with np.errstate(invalid="ignore"):
        ratio = float(np.nanmax(err / lim)) if np.isfinite(err).all() else float("inf")
    line = json.dumps({"what": what[:300], "K": int(K), "acc": np.dtype(acc_dtype).name,
                       "out": np.dtype(out_dtype).name, "ratio": ratio, "size": int(err.size)})
    with open(path, "a") as f:  # one short line per write: appends from xdist workers stay whole
        f.write(line + "\n")
