"""The child process of the OpenCL device proof (proof.py): builds and runs xdev's kernels
on one device at one vector width, checks them against NumPy, and prints one line
``XDEV-PROOF {"ok": ...}``. Run as ``python -m xdev.backends.opencl.proof_child P D VW
NAME PLATFORM_VERSION [PARAMS_JSON|- [tc]]``; with ``tc`` it checks only the tensor-core
GEMM (tc.py), in both numeric modes. Nothing imports this module.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from xdev.contract import env

from .device import OpenCLDevice
from .discovery import candidates
from .proof import ENV_FAULT  # noqa: F401  (documented there)


def _check(name: str, got: Any, ref: Any, mag: Any, dtype: Any, u_acc: float = 2.0 ** -24) -> None:
    import numpy as np

    print(f"XDEV-PROOF-STEP {name} ({np.dtype(dtype)})", flush=True)
    u = {2: 2.0 ** -11, 4: 2.0 ** -24, 8: 2.0 ** -53}[np.dtype(dtype).itemsize]
    k = 64  # well above every reduction length below; an indexing bug is off by O(1)
    bound = (k + 2) * u_acc * mag + u * np.abs(ref) + 1e-30
    if got.shape != ref.shape or not np.all(np.abs(got - ref) <= bound):
        err = float(np.max(np.abs(got - ref))) if got.shape == ref.shape else got.shape
        raise AssertionError(f"{name} ({np.dtype(dtype)}) gave wrong results (max error {err})")


def _conv_ref(x, w, b, stride, pad, groups):
    import numpy as np

    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho = (H + 2 * pad - kh) // stride + 1
    Wo = (W + 2 * pad - kw) // stride + 1
    y = np.zeros((N, O, Ho, Wo))
    Og = O // groups
    for o in range(O):
        g = o // Og
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, g * Cg:(g + 1) * Cg, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
                y[:, o] += np.einsum("nchw,c->nhw", patch, w[o, :, i, j])
    return y + (0 if b is None else b[None, :, None, None])


def child_main(argv: list[str]) -> int:
    p, d, vw, name, pversion = int(argv[0]), int(argv[1]), int(argv[2]), argv[3], argv[4]
    params = json.loads(argv[5]) if len(argv) > 5 and argv[5] != "-" else None
    try:
        if argv[6:] == ["tc"]:
            _child_tc(p, d, vw, name, pversion, params)
        else:
            _child(p, d, vw, name, pversion, params)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        msg = " ".join(str(e).split())
        print("XDEV-PROOF " + json.dumps({"ok": False, "error": f"{type(e).__name__}: {msg[:600]}"}), flush=True)
        return 1
    print("XDEV-PROOF " + json.dumps({"ok": True}), flush=True)
    return 0


def _open(p: int, d: int, vw: int, name: str, pversion: str, params: dict[str, Any] | None) -> OpenCLDevice:
    cand = next((c for c in candidates() if (c.p, c.d) == (p, d)), None)
    if cand is None or cand.device.name.strip() != name or cand.platform.version.strip() != pversion:
        raise RuntimeError(f"device opencl:{p}:{d} is not {name!r} in this process")
    dev = OpenCLDevice(cand, vector_width=vw)
    if params is not None:  # the parent's, which knows the compiler's target (proof.prove)
        dev.params = params
    return dev


def _child_tc(p: int, d: int, vw: int, name: str, pversion: str, params: dict[str, Any] | None) -> None:
    """The tensor-core GEMM in both modes: operands read in place (ragged sizes, an offset
    view), packed (a transposed view, odd row lengths), batched with a broadcast operand,
    and an exactly tiled product; each within the mode's bound (TF32: unit roundoff 2^-11)."""
    import numpy as np

    from . import gemm, tc

    dev = _open(p, d, vw, name, pversion, params)
    if dev.tc_reason is not None:
        raise RuntimeError(f"no tensor-core GEMM here: {dev.tc_reason}")
    dev.params["small_work"] = 0
    rng = np.random.default_rng(0)
    t32, t16 = dev.params[tc.KEYS[32]], dev.params[tc.KEYS[16]]
    tiled = (2 * max(t32["BM"], t16["BM"]), max(t32["BN"], t16["BN"]), 3 * max(t32["BK"], t16["BK"]))
    for dt, force in ((np.float16, None), (np.float32, True)):
        dev.force_tf32 = force
        u_acc = 2.0 ** -11 if dt == np.float32 else 2.0 ** -24

        def up(h):
            return dev.upload(np.ascontiguousarray(h, dtype=dt))

        # (label, A shape, B shape, how A is placed: "slice" of a wider array, whose rows
        # stay 16-byte aligned and are read in place, "transposed" view (packed), "plain")
        cases = [("in place, ragged", (37, 45), (45, 70), "slice"),
                 ("packed (transposed A, odd rows)", (29, 33), (33, 21), "transposed"),
                 ("exact tiles", tiled[:1] + tiled[2:], tiled[2:] + tiled[1:2], "plain")]
        for label, sa, sb, place in cases:
            a, b = rng.uniform(-1, 1, sa), rng.uniform(-1, 1, sb)
            ha, hb = a.astype(dt).astype(np.float64), b.astype(dt).astype(np.float64)
            if gemm.family(dev, sa[0], sb[1], sa[1], np.dtype(dt)) != "tc":
                raise RuntimeError(f"the tensor-core family is not selected for {np.dtype(dt)}")
            if place == "slice":
                wide_a, wide_b = np.zeros((sa[0], sa[1] + 11)), np.zeros((sb[0] + 1, sb[1] + 10))
                wide_a[:, 8:8 + sa[1]], wide_b[1:, :sb[1]] = a, b
                xa = dev.getitem(up(wide_a), (slice(None), slice(8, 8 + sa[1])))
                xb = dev.getitem(up(wide_b), (slice(1, None), slice(0, sb[1])))
            else:
                xa = dev.transpose(up(a.T), (1, 0)) if place == "transposed" else up(a)
                xb = up(b)
            got = dev.download(dev.matmul(xa, xb)).astype(np.float64)
            _check(f"tensor-core matmul {label}", got, ha @ hb, np.abs(ha) @ np.abs(hb), dt, u_acc)
        a, b = rng.uniform(-1, 1, (2, 3, 20, 24)), rng.uniform(-1, 1, (3, 24, 9))
        ha, hb = a.astype(dt).astype(np.float64), b.astype(dt).astype(np.float64)
        got = dev.download(dev.matmul(up(a), up(b))).astype(np.float64)
        _check("tensor-core batched matmul, broadcast B", got, ha @ hb, np.abs(ha) @ np.abs(hb), dt, u_acc)
    if dev.tc_reason is not None:  # a build failure switched it off on the way
        raise RuntimeError(dev.tc_reason)


def _child(p: int, d: int, vw: int, name: str, pversion: str, params: dict[str, Any] | None) -> None:
    import numpy as np

    from xdev.contract import ConvParams

    from .kernels import type_options

    dev = _open(p, d, vw, name, pversion, params)
    if env.opencl_proof_fault() == "abort":
        dev.program("copy.cl", type_options(np.float32, np.float32))
        os.abort()  # what an LLVM "Cannot select" does to the process
    rng = np.random.default_rng(0)
    dtypes = [np.float32] + ([np.float64] if dev.has_fp64 else []) + [np.float16]
    for dt in dtypes:
        dt = np.dtype(dt)

        def up(h):
            return dev.upload(np.ascontiguousarray(h, dtype=dt))

        def mm(a, b, label):
            ha, hb = a.astype(dt).astype(np.float64), b.astype(dt).astype(np.float64)
            got = dev.download(dev.matmul(up(a), up(b))).astype(np.float64)
            _check(label, got, ha @ hb, np.abs(ha) @ np.abs(hb), dt)

        a, b = rng.uniform(-1, 1, (13, 9)), rng.uniform(-1, 1, (9, 37))
        mm(a, b, "matmul (small kernel)")
        small = dev.params["small_work"]
        dev.params["small_work"] = 0  # the family's kernels (packed or tiled) on a tiny shape
        try:
            mm(a, b, "matmul")
            bt = rng.uniform(-1, 1, (2, 37, 9))
            got = dev.download(dev.matmul(up(a), dev.transpose(up(bt), (0, 2, 1))))
            ref = a.astype(dt).astype(np.float64) @ bt.astype(dt).astype(np.float64).transpose(0, 2, 1)
            _check("batched matmul of a transposed view", got.astype(np.float64), ref,
                   np.abs(ref) + 9, dt)
            mm(np.ones((3, 0)), np.ones((0, 4)), "matmul with K=0 (fill)")
            if "xl_work" in dev.params and dev.family == "gpu":
                xl = dev.params["xl_work"]
                dev.params["xl_work"] = 0  # the GPU family's packed xl kernel too
                try:
                    mm(a, b, "matmul (xl kernel)")
                finally:
                    dev.params["xl_work"] = xl
        finally:
            dev.params["small_work"] = small
        x = rng.uniform(-1, 1, (2, 4, 7, 9))
        for stride, groups, algo in ((1, 1, "gemm"), (2, 2, "gemm"), (1, 4, "direct"), (2, 1, "direct")):
            w = rng.uniform(-1, 1, (4, 4 // groups, 3, 3))
            bias = rng.uniform(-1, 1, 4)
            hx, hw, hb = (v.astype(dt).astype(np.float64) for v in (x, w, bias))
            Ho, Wo = (7 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
            cp = ConvParams(2, 4, 7, 9, 4, 3, 3, groups, (stride, stride), (1, 1), (1, 1, 1, 1), Ho, Wo)
            y, _ = dev.conv2d(up(x), up(w), up(bias), cp, algo)
            ref = _conv_ref(hx, hw, hb, stride, 1, groups)
            mag = _conv_ref(np.abs(hx), np.abs(hw), np.abs(hb), stride, 1, groups)
            _check(f"conv2d {algo} stride {stride} groups {groups}",
                   dev.download(y).astype(np.float64), ref, mag, dt)
        # The benchmark's peak calibration kernel, a few iterations.
        dev.peak_gflops(dt, iters=4, repeat=1)
        print(f"XDEV-PROOF-STEP peak ({dt})", flush=True)
    _exact_kernels(dev, rng)


def _exact_kernels(dev: OpenCLDevice, rng: Any) -> None:
    """The integer kernels (int32: matmul, direct conv2d with bias, a widening conversion),
    with values small enough that float64 computes the same sums exactly."""
    import numpy as np

    from xdev.contract import ConvParams

    def same(name: str, got: Any, ref: Any) -> None:
        print(f"XDEV-PROOF-STEP {name} (int32)", flush=True)
        if got.shape != ref.shape or not np.array_equal(got, ref):
            raise AssertionError(f"{name} (int32) gave wrong results")

    a, b = rng.integers(-99, 99, (13, 9)), rng.integers(-99, 99, (9, 37))
    up = dev.upload
    same("matmul", dev.download(dev.matmul(up(a.astype(np.int32)), up(b.astype(np.int32)))), (a @ b).astype(np.int32))
    x, w, bias = rng.integers(-9, 9, (2, 4, 7, 9)), rng.integers(-9, 9, (4, 2, 3, 3)), rng.integers(-9, 9, 4)
    cp = ConvParams(2, 4, 7, 9, 4, 3, 3, 2, (2, 2), (1, 1), (1, 1, 1, 1), 4, 5)
    y, _ = dev.conv2d(up(x.astype(np.int32)), up(w.astype(np.int32)), up(bias.astype(np.int32)), cp, "direct")
    same("conv2d direct stride 2 groups 2", dev.download(y), _conv_ref(x, w, bias, 2, 1, 2).astype(np.int32))
    same("int8 to int32", dev.download(dev.astype(up(x.astype(np.int8)), np.dtype(np.int32))), x.astype(np.int32))


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
