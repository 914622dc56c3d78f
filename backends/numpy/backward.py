"""conv2d backward on NumPy: the ``gemm`` algorithm (im2col / col2im around BLAS GEMMs).

For group g, with cols the im2col matrix (K = Cg*kH*kW rows, one column per output pixel of
every image) and gy the upstream gradient as (Og, N*Ho*Wo):

    grad_w[g] = gy @ cols^T              (a reduction over N*Ho*Wo)
    dcols     = W[g]^T @ gy              (a reduction over Og), scattered back by col2im
    grad_bias = gy summed over N, Ho, Wo

Both GEMMs run once per block of images (and of output rows when one image's columns exceed
the budget), so memory stays bounded like the forward pass.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from xdev.contract import F16, F32, ConvParams, dgrad_as_forward
COLS_BUDGET_BYTES = 64 << 20


# From this many grad_w elements (K*Og) on, grad_w is accumulated untransposed (see below).
DIRECT_W_ELEMS = 1 << 20


def blocks(p: ConvParams, itemsize: int, budget: int = COLS_BUDGET_BYTES):
    """(n0, nb, h0, hb) blocks whose im2col matrix stays within ``budget`` bytes."""
    per_row = max(p.groups * p.K * p.Wo * itemsize, 1)
    rows = max(1, min(p.Ho, budget // per_row))
    if rows == p.Ho:
        imgs = max(1, min(p.N, budget // (per_row * p.Ho)))
        return [(n0, min(imgs, p.N - n0), 0, p.Ho) for n0 in range(0, p.N, imgs)]
    return [(n, 1, h0, min(rows, p.Ho - h0)) for n in range(p.N) for h0 in range(0, p.Ho, rows)]


def conv2d_backward(gy: np.ndarray, x: np.ndarray, w: np.ndarray, p: ConvParams,
                    needs: frozenset[str], forward: Callable[..., np.ndarray], budget: int = COLS_BUDGET_BYTES):
    """(grad_x, grad_w, grad_bias) in x's dtype; float16 computes in float32.

    ``forward(x, w, bias, p)`` is the device's forward convolution (device.conv2d_im2col).
    """
    dt = x.dtype
    cdt = F32 if dt == F16 else dt
    gy = gy.astype(cdt, copy=False)
    gb = gy.sum(axis=(0, 2, 3)) if "bias" in needs else None
    N, G, Cg, Og, K, kh, kw = p.N, p.groups, p.Cg, p.Og, p.K, p.kh, p.kw
    Ho, Wo, (sh, sw), (dh, dw) = p.Ho, p.Wo, p.stride, p.dilation
    pt, pb, pl, pr = p.pad
    Hp, Wp = p.H + pt + pb, p.W + pl + pr
    need_x, need_w = "x" in needs, "w" in needs
    # (Not for few input channels: the forward im2col of gy would be O/C times larger than
    # col2im's work, e.g. 21x for an RGB first layer.)
    fwd = dgrad_as_forward(p) if need_x and N * Ho * Wo and K and Og and p.C >= 16 else None
    gx_fwd = None
    if fwd is not None:
        # Stride 1: grad_x is the forward convolution of gy with the flipped, channel-swapped
        # weights (one im2col + GEMM, no col2im scatter).
        wf = w.astype(cdt, copy=False).reshape(G, Og, Cg, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        gx_fwd = forward(gy, np.ascontiguousarray(wf).reshape(p.C, Og, kh, kw), None, fwd)
        need_x = False
    # grad_w accumulates transposed, (G, K, Og) = cols @ gy^T, for small K*Og: OpenBLAS ran that
    # product with a long N*Ho*Wo reduction faster than gy @ cols^T. For large K*Og (VGG's 512-
    # channel layers) the two products cost the same, but transposing the (K, Og) result back
    # cost more than the GEMM itself (10.6 ms against 5.6 ms at K=4608, Og=512: power-of-two
    # strides thrash the cache), so those accumulate in grad_w's own (G, Og, K) layout.
    direct_w = K * Og >= DIRECT_W_ELEMS
    gwT = np.empty((G, Og, K) if direct_w else (G, K, Og), cdt) if need_w else None
    first = True  # the first block's product goes straight into gwT: no zero fill, no temporary
    gxp = np.zeros((N, p.C, Hp, Wp), cdt) if need_x else None
    if N * Ho * Wo and K and Og and (need_x or need_w):
        gy4 = gy.reshape(N, G, Og, Ho * Wo)
        wT = w.astype(cdt, copy=False).reshape(G, Og, K).transpose(0, 2, 1)
        xp = None
        if need_w:
            xc = x.astype(cdt, copy=False)
            xp = np.pad(xc, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if any(p.pad) else xc
        for n0, nb, h0, hb in blocks(p, np.dtype(cdt).itemsize, budget):
            L = nb * hb * Wo
            # (G, Og, nb*hb*Wo): the GEMMs' operand, images and pixels in one long axis.
            g = gy4[n0 : n0 + nb, :, :, h0 * Wo : (h0 + hb) * Wo].transpose(1, 2, 0, 3).reshape(G, Og, L)
            if need_w:
                sN, sC, sH, sW = xp.strides
                view = as_strided(
                    xp[n0 : n0 + nb, :, h0 * sh :, :],
                    shape=(G, Cg, kh, kw, nb, hb, Wo),
                    strides=(sC * Cg, sC, sH * dh, sW * dw, sN, sH * sh, sW * sw),
                    writeable=False,
                )
                cols = view.reshape(G, K, L)  # the im2col copy
                a, b = (g, cols.transpose(0, 2, 1)) if direct_w else (cols, g.transpose(0, 2, 1))
                if first:
                    np.matmul(a, b, out=gwT)
                    first = False
                else:
                    gwT += np.matmul(a, b)
                del cols
            if need_x:
                dcols = np.matmul(wT, g).reshape(G, Cg, kh, kw, nb, hb, Wo)
                tgt = gxp[n0 : n0 + nb].reshape(nb, G, Cg, Hp, Wp)
                # col2im: each tap adds its column block back onto the pixels it read.
                for i in range(kh):
                    r0 = h0 * sh + i * dh
                    for j in range(kw):
                        c0 = j * dw
                        t = tgt[:, :, :, r0 : r0 + sh * (hb - 1) + 1 : sh, c0 : c0 + sw * (Wo - 1) + 1 : sw]
                        t += dcols[:, :, i, j].transpose(2, 0, 1, 3, 4)
                del dcols
    if gwT is not None and first:  # nothing to reduce (an empty axis): the gradient is zero
        gwT.fill(0)
    gx = None
    if gx_fwd is not None:
        gx = gx_fwd.astype(dt, copy=False)
    elif need_x:
        gx = gxp[:, :, pt : pt + p.H, pl : pl + p.W]
        gx = np.ascontiguousarray(gx, dtype=dt)
    gw = None
    if gwT is not None:
        gw = gwT if direct_w else np.ascontiguousarray(gwT.transpose(0, 2, 1))
        gw = gw.reshape(p.O, Cg, kh, kw).astype(dt, copy=False)
    if gb is not None:
        gb = gb.astype(dt, copy=False)
    return gx, gw, gb
