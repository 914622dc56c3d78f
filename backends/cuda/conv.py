"""conv2d on CUDA: the choice among cuDNN, im2col + cuBLAS ("gemm") and the direct kernel.

No CuPy here: the algorithms are written against an array module ``xp`` (cupy on a GPU, numpy
in the tests' host emulation of the .cu files) and a ``launch(plan, arrays)`` that runs one
planned kernel (launch.py), so the test suite runs them without a GPU.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from xdev.contract import F16, F32, F64, ConvParams, env, is_exact

from .cudnn_tune import CudnnUnsupported
from .launch import COLS_BUDGET_BYTES, direct_launch, dtype_name, elem_strides, gemm_blocks, im2col_launch


def default_algorithm(dev: Any) -> str:
    """What algorithm="auto" runs: cuDNN where it is available, else im2col + cuBLAS."""
    return "cudnn" if "cudnn" in dev.conv_algorithms else "gemm"


def refusal(dev: Any, x: Any, w: Any, p: ConvParams, what: str, e: Exception) -> ValueError:
    """The error for an explicit algorithm="cudnn" that cuDNN cannot run."""
    return ValueError(
        f"cuDNN cannot run {what} on {dev.key} under xdev's numeric rules (x {tuple(x.shape)}, "
        f"w {tuple(w.shape)}, {x.dtype}, stride {p.stride}, padding {p.pad}, dilation {p.dilation}, "
        f"groups {p.groups}): {e}; use algorithm='gemm' or 'direct'"
    )


def conv2d(dev: Any, x: Any, w: Any, bias: Any | None, p: ConvParams, algorithm: str) -> tuple[Any, str]:
    """y = conv2d(x, w, bias) on CudaDevice ``dev`` (current), and the algorithm that ran."""
    xp = dev.xp
    exact = is_exact(x.dtype)  # integers and bool: im2col + CuPy's integer matmul, exact
    algo = "gemm" if exact else default_algorithm(dev) if algorithm == "auto" else algorithm  # checked by xdev._ops
    if p.N * p.O * p.Ho * p.Wo == 0:
        return xp.empty(p.out_shape, x.dtype), algo
    if p.K == 0:  # no input channels: only the bias remains
        y = xp.zeros(p.out_shape, x.dtype)
        if bias is not None:
            y[...] = bias.reshape(1, p.O, 1, 1)
        return y, algo
    if algo == "cudnn":
        try:
            return dev.cudnn.conv2d(x, w, bias, p), "cudnn"
        except CudnnUnsupported as e:
            if algorithm != "auto":
                raise refusal(dev, x, w, p, "this convolution", e) from None
            algo = "gemm"
    y = xp.empty(p.out_shape, x.dtype)
    if algo == "gemm":
        run_gemm(xp, dev.launch, x, w, bias, p, y, matmul=matmul_copy(xp) if exact else dev.gemm_into)
    else:
        run_direct(xp, dev.launch, x, w, bias, p, y)
    return y, algo


# ---- the two algorithms -------------------------------------------------------------------------
# ``y`` is the preallocated C-contiguous (N, O, Ho, Wo) output; the caller has handled empty
# outputs and K == 0.


def run_gemm(xp: Any, launch: Any, x: Any, w: Any, bias: Any, p: Any, y: Any,
             budget: int = COLS_BUDGET_BYTES, matmul: Any = None) -> None:
    """im2col (own kernel) + one batched GEMM over the groups per block of images.

    ``matmul(a, b, out=...)`` is the GEMM: the device's own cuBLAS call (numpy's in the tests).
    """
    mm = xp.matmul if matmul is None else matmul
    dt = x.dtype
    G, Og, K = p.groups, p.O // p.groups, p.K
    y4 = y.reshape(p.N, G, Og, p.Ho * p.Wo)
    wm = xp.ascontiguousarray(w).reshape(G, Og, K)
    pointwise = p.kh == p.kw == 1 and tuple(p.stride) == (1, 1) and not any(p.pad)
    if pointwise and (bias is None or dt.itemsize > 2):
        # A 1x1 convolution: x already is the column matrix (Ho = H, Wo = W).
        mm(wm, x.reshape(p.N, G, p.C // G, p.H * p.W), out=y4)
        if bias is not None:
            y += bias.reshape(1, p.O, 1, 1)
        return
    Kp = K
    if bias is not None:
        # The bias rides in the GEMM as one more weight column against a row of ones, so the
        # result is rounded once (float16 included).
        wm = xp.concatenate([wm, bias.reshape(G, Og, 1)], axis=2)
        Kp = K + 1
    xs = elem_strides(x)
    name = dtype_name(dt)
    blocks = gemm_blocks(p, Kp, dt.itemsize, budget)
    for blk in blocks:
        L = blk.hb * p.Wo
        cols = xp.empty((blk.nb, G, Kp, L), dt)
        if len(blocks) == 1:  # one block is everything (blk.nb == N, blk.hb == Ho): no views to make
            xb, out = x, y4
        else:
            xb = x[blk.n0 : blk.n0 + blk.nb]
            out = y4[blk.n0 : blk.n0 + blk.nb, :, :, blk.h0 * p.Wo : blk.h0 * p.Wo + L]
        launch(im2col_launch(p, name, xs, blk, Kp), {"x": xb, "cols": cols})
        mm(wm, cols, out=out)
        del cols


def matmul_copy(xp: Any) -> Any:
    """matmul(a, b, out=...) as ``out[...] = xp.matmul(a, b)``: CuPy's integer and bool matmul
    (exact, wrapping as NumPy's), into an output that may be a strided view."""
    def mm(a: Any, b: Any, out: Any) -> Any:
        out[...] = xp.matmul(a, b)
        return out

    return mm


def run_direct(xp: Any, launch: Any, x: Any, w: Any, bias: Any, p: Any, y: Any) -> None:
    """The tiled direct kernel (or its one-thread-per-output fallback)."""
    plan = direct_launch(p, dtype_name(x.dtype), elem_strides(x), bias is not None)
    arrays = {
        "x": x,
        "w": xp.ascontiguousarray(w),
        "bias": None if bias is None else xp.ascontiguousarray(bias),
        "y": y,
    }
    launch(plan, arrays)


# ---- what ran (the benchmark's honesty columns) ---------------------------------------------------

def numerics(dev: Any, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
    """The numerics a conv2d of ``algorithm`` just ran with on ``dev``."""
    dtype = np.dtype(dtype)
    tf32 = dtype == F32 and dev.cc >= (8, 0) and env.cuda_tf32()
    mode = {F16: "fp16", F64: "fp64"}.get(dtype, "tf32" if tf32 else "strict-fp32")
    layout, fast = "nchw", False
    if algorithm == "direct" and dtype == F32:
        mode = "strict-fp32"  # xdev's own kernel computes in FP32 whatever the switch says
    if algorithm == "cudnn":
        c = cudnn_choice(dev)
        if c is not None:
            mode, fast, layout = c["mode"], c["winograd_fft_allowed"], c["layout"]
            if c["input_layout"] != layout:
                layout = f"{c['input_layout']}->{layout}"
    text = f"{mode}, {'Winograd/FFT allowed' if fast else 'no Winograd/FFT'}, {layout}"
    return {"numeric_mode": mode, "winograd_fft_allowed": fast, "layout": layout, "numerics": text}


def cudnn_choice(dev: Any) -> dict[str, Any] | None:
    """What the latest cuDNN call on ``dev`` ran: numeric mode, Winograd/FFT allowed, layout, plan."""
    ex = dev.cudnn.last
    if ex is None:
        return None
    c = ex.choice
    return {
        "mode": ex.spec.mode, "winograd_fft_allowed": ex.spec.fast, "input_layout": ex.spec.x_layout,
        "layout": "nhwc" if ex.nhwc else "nchw", "bias": ("fused" if ex.fused else "separate")
        if ex.spec.has_bias else None, "plan": None if c is None else c.name,
        "plan_index": ex.index, "autotuned": bool(c is not None and c.candidates),
        "candidates": None if c is None else c.candidates,
        # How the plan is executed (cudnn_exec._Exec.pick_form): the form, the checked fallbacks, why no other was kept.
        "execute": ex.form, "execute_fallbacks": list(ex.spare), "execute_dropped": list(ex.dropped),
    }
