"""The child process of the OpenCL device proof (proof.py): builds and runs xdev's kernels
on one device at one vector width, checks them against NumPy, and prints one line
``XDEV-PROOF {"ok": ...}``. Run as ``python -m xdev.backends.opencl.proof_child P D VW
NAME PLATFORM_VERSION [PARAMS_JSON]``; nothing imports this module.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from xdev.contract import env

from .device import OpenCLDevice, candidates
from .proof import ENV_FAULT  # noqa: F401  (documented there)


def _check(name: str, got: Any, ref: Any, mag: Any, dtype: Any) -> None:
    import numpy as np

    print(f"XDEV-PROOF-STEP {name} ({np.dtype(dtype)})", flush=True)
    u = {2: 2.0 ** -11, 4: 2.0 ** -24, 8: 2.0 ** -53}[np.dtype(dtype).itemsize]
    k = 64  # well above every reduction length below; an indexing bug is off by O(1)
    bound = (k + 2) * 2.0 ** -24 * mag + u * np.abs(ref) + 1e-30
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
    params = json.loads(argv[5]) if len(argv) > 5 else None
    try:
        _child(p, d, vw, name, pversion, params)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides
        msg = " ".join(str(e).split())
        print("XDEV-PROOF " + json.dumps({"ok": False, "error": f"{type(e).__name__}: {msg[:600]}"}), flush=True)
        return 1
    print("XDEV-PROOF " + json.dumps({"ok": True}), flush=True)
    return 0


def _child(p: int, d: int, vw: int, name: str, pversion: str, params: dict[str, Any] | None) -> None:
    import numpy as np

    from xdev.contract import ConvParams

    from .kernels import type_options

    cand = next((c for c in candidates() if (c.p, c.d) == (p, d)), None)
    if cand is None or cand.device.name.strip() != name or cand.platform.version.strip() != pversion:
        raise RuntimeError(f"device opencl:{p}:{d} is not {name!r} in this process")
    dev = OpenCLDevice(cand, vector_width=vw)
    if params is not None:  # the parent's, which knows the compiler's target (proof.prove)
        dev.params = params
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


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
