"""Float64 references written independently of the code under test."""
from __future__ import annotations

import numpy as np


def matmul_ref(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a @ b, |a| @ |b|) in float64 by broadcasting multiply and sum (no BLAS)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    va, vb = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if va else a
    b2 = b[:, None] if vb else b

    def prod(x, y):
        return (x[..., :, :, None] * y[..., None, :, :]).sum(axis=-2)

    out, out_abs = prod(a2, b2), prod(np.abs(a2), np.abs(b2))
    if va:
        out, out_abs = out[..., 0, :], out_abs[..., 0, :]
    if vb:
        out, out_abs = out[..., 0], out_abs[..., 0]
    return out, out_abs


def conv_padding(padding, kh, kw, dh, dw):
    """(top, bottom, left, right) for PyTorch's padding argument."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        return th // 2, th - th // 2, tw // 2, tw - tw // 2
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    return ph, ph, pw, pw


def _padded(x, w, stride, padding, dilation):
    """x and w in float64, x zero-padded as conv2d pads it, (sh, sw), (dh, dw) and the
    (top, left) offset of x inside the padded array."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    N, C, H, W = x.shape
    _, _, kh, kw = w.shape
    pt, pb, pl, pr = conv_padding(padding, kh, kw, dh, dw)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr))
    xp[:, :, pt : pt + H, pl : pl + W] = x
    return x, w, xp, (sh, sw), (dh, dw), (pt, pl)


def conv2d_ref(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """(y, |x| * |w| + |bias|) in float64 with explicit loops over groups and kernel taps."""
    x, w, xp, (sh, sw), (dh, dw), _ = _padded(x, w, stride, padding, dilation)
    N, C, _, _ = x.shape
    O, Cg, kh, kw = w.shape
    Ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    Wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo))
    y_abs = np.zeros((N, O, Ho, Wo))
    for g in range(groups):
        xs = xp[:, g * Cg : (g + 1) * Cg]
        ws = w[g * Og : (g + 1) * Og]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dh, j * dw
                patch = xs[:, :, r0 : r0 + sh * (Ho - 1) + 1 : sh, c0 : c0 + sw * (Wo - 1) + 1 : sw]
                y[:, g * Og : (g + 1) * Og] += np.einsum("nchw,oc->nohw", patch, ws[:, :, i, j])
                y_abs[:, g * Og : (g + 1) * Og] += np.einsum(
                    "nchw,oc->nohw", np.abs(patch), np.abs(ws[:, :, i, j])
                )
    if bias is not None:
        b = np.asarray(bias, np.float64).reshape(1, O, 1, 1)
        y += b
        y_abs += np.abs(b)
    return y, y_abs


def conv2d_backward_ref(gy, x, w, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of conv2d in float64 with explicit loops over groups and kernel taps.

    Returns {"x": (grad_x, |gy| * |w| summed alike), "w": (grad_w, abs), "bias": (grad_bias, abs)}:
    each tap adds its upstream gradient back onto the input pixels it read (grad_x), or
    correlates the upstream gradient with those pixels (grad_w).
    """
    gy = np.asarray(gy, np.float64)
    x, w, xp, (sh, sw), (dh, dw), (pt, pl) = _padded(x, w, stride, padding, dilation)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    _, _, Ho, Wo = gy.shape
    gxp = np.zeros_like(xp)
    gxp_abs = np.zeros_like(xp)
    gw = np.zeros(w.shape)
    gw_abs = np.zeros(w.shape)
    Og = O // groups
    for g in range(groups):
        cs, os_ = slice(g * Cg, (g + 1) * Cg), slice(g * Og, (g + 1) * Og)
        gyg = gy[:, os_]
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dh, j * dw
                rows, colsl = slice(r0, r0 + sh * (Ho - 1) + 1, sh), slice(c0, c0 + sw * (Wo - 1) + 1, sw)
                wt = w[os_, :, i, j]  # (Og, Cg)
                gxp[:, cs, rows, colsl] += np.einsum("nohw,oc->nchw", gyg, wt)
                gxp_abs[:, cs, rows, colsl] += np.einsum("nohw,oc->nchw", np.abs(gyg), np.abs(wt))
                patch = xp[:, cs, rows, colsl]
                gw[os_, :, i, j] = np.einsum("nohw,nchw->oc", gyg, patch)
                gw_abs[os_, :, i, j] = np.einsum("nohw,nchw->oc", np.abs(gyg), np.abs(patch))
    crop = (slice(None), slice(None), slice(pt, pt + H), slice(pl, pl + W))
    return {
        "x": (gxp[crop], gxp_abs[crop]),
        "w": (gw, gw_abs),
        "bias": (gy.sum(axis=(0, 2, 3)), np.abs(gy).sum(axis=(0, 2, 3))),
    }


# ---- integer and bool: exact, in Python integers (object arrays), wrapped as NumPy wraps ----
def wrap(exact: np.ndarray, dtype) -> np.ndarray:
    """Python-integer results as NumPy's `dtype` computes them: modulo 2**bits, two's
    complement for signed types; bool: nonzero (NumPy's logical matmul, or of ands)."""
    dtype = np.dtype(dtype)
    exact = np.asarray(exact, dtype=object)
    flat = [int(v) for v in exact.ravel()]
    if dtype == np.bool_:
        return np.array([v != 0 for v in flat], dtype=np.bool_).reshape(exact.shape)
    bits = 8 * dtype.itemsize
    out = [v % (1 << bits) for v in flat]
    if dtype.kind == "i":
        out = [v - (1 << bits) if v >= (1 << (bits - 1)) else v for v in out]
    return np.array(out, dtype=dtype).reshape(exact.shape)


def _exact(a: np.ndarray) -> np.ndarray:
    """Values as Python ints (bool: 0 and 1), in an object array."""
    return np.asarray(a).astype(np.int64 if np.asarray(a).dtype == np.bool_ else np.asarray(a).dtype).astype(object)


def matmul_exact(a: np.ndarray, b: np.ndarray, dtype) -> np.ndarray:
    """a @ b of integer or bool data, exact in Python ints, then wrapped to `dtype`."""
    return wrap(np.matmul(_exact(a), _exact(b)), dtype)


def conv2d_exact(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, dtype=None):
    """conv2d of integer or bool data with explicit loops over groups and taps, exact in
    Python ints, then wrapped to `dtype` (default: NumPy's promotion of the operands)."""
    dtype = np.result_type(x, w, *([] if bias is None else [bias])) if dtype is None else np.dtype(dtype)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    pt, pb, pl, pr = conv_padding(padding, kh, kw, dh, dw)
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=object)
    xp[:, :, pt : pt + H, pl : pl + W] = _exact(x)
    we = _exact(w)
    Ho = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    Wo = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    Og = O // groups
    y = np.zeros((N, O, Ho, Wo), dtype=object)
    for g in range(groups):
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg : (g + 1) * Cg, i * dh : i * dh + sh * (Ho - 1) + 1 : sh,
                           j * dw : j * dw + sw * (Wo - 1) + 1 : sw]
                # (Og, Cg) . (N, Cg, Ho, Wo) over Cg -> (Og, N, Ho, Wo)
                y[:, g * Og : (g + 1) * Og] += np.tensordot(we[g * Og : (g + 1) * Og, :, i, j], patch,
                                                            axes=([1], [1])).transpose(1, 0, 2, 3)
    if bias is not None:
        y += _exact(bias).reshape(1, O, 1, 1)
    return wrap(y, dtype)
