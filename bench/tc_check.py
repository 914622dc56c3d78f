"""The OpenCL tensor-core GEMM on one NVIDIA GPU: variants, correctness, speed against cuBLAS.

    python bench/tc_check.py --mode tf32 --json tc-tf32.json    # on the GPU machine (gpu_tensorcore.sh)
    python bench/tc_check.py --mode f16 --n 256 --rounds 1      # any machine: what runs, runs

For one numeric mode (tf32: float32 data, TF32 tensor cores; f16: float16 data, float32
accumulation) and each tile variant of backends/opencl/gemm_tc.cl:
  1. build it through NVIDIA's OpenCL (xdev's own path: xdev.matmul with the variant's
     parameters) and check it against float64 on several odd, batched and transposed shapes
     within the mode's bound (TF32: unit roundoff 2^-11; float16: float32 accumulation);
  2. build the same text as CUDA C (bench/tc_cuda_prelude.h, CuPy RawModule: the "same design
     in CUDA" twin) and check it likewise;
  3. time GEMM n^3 (default 4096) of every variant, both builds, and cuBLAS in the same mode
     (xdev's CUDA backend: CUBLAS_COMPUTE_32F_FAST_TF32 / float16 with float32 compute),
     interleaved: each round times every side once; the median over rounds is reported;
  4. check the n^3 results of each side against a float64 product computed on the GPU.
Prints a table (TFLOP/s, ratio to cuBLAS) last; --json writes every figure. A side that
cannot run says why. Rows are printed as they finish, so a crash or a timeout loses little.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import xdev  # noqa: E402
from xdev.backends.opencl import gemm, tc  # noqa: E402

# name -> parameters (missing keys: the built-in default of the mode)
VARIANTS = {  # in priority order (the budget may stop the list early); changes to tc.DEFAULTS
    "tf32": {
        "default": {},  # 4 warps of 64 x 64 (two work-groups per SM), 3 stages
        "w2x4": {"WN": 4},  # 8 warps of 64 x 32 (the default before the first H200 run)
        "round-smem-int": {"RS": 2},  # TF32 rounding once per element, integer ops
        "128x256": {"BN": 256, "WN": 4, "STAGES": 2},
        "bk8-s5": {"BK": 8, "STAGES": 5},
        "s2": {"STAGES": 2},
        "64x128-s4": {"BM": 64, "BN": 128, "STAGES": 4},
        "regstage": {"ASYNC": 0, "STAGES": 2},
        "regstage-plain": {"ASYNC": 0, "STAGES": 2, "LDSM": 0},  # no ldmatrix, no cp.async: mma only
        "gm1": {"GM": 1},
    },
    "f16": {
        "default": {},
        "w2x4": {"WN": 4},
        "bk16-s5": {"BK": 16, "STAGES": 5},
        "128x256": {"BN": 256, "WN": 4, "STAGES": 2},
        "256x128": {"BM": 256, "WM": 4, "STAGES": 2},
        "s2": {"STAGES": 2},
        "64x128-s4": {"BM": 64, "BN": 128, "STAGES": 4},
        "regstage": {"ASYNC": 0, "STAGES": 2},
        "regstage-plain": {"ASYNC": 0, "STAGES": 2, "LDSM": 0},
    },
}
ODD_SHAPES = [  # (batch A, M, K, N, A transposed?)
    ((), 37, 45, 70, False), ((), 129, 257, 255, False), ((2,), 20, 24, 9, False), ((), 33, 29, 21, True),
    ((), 256, 384, 256, False),
]


# Tiny kernels, one inline-asm construct each: which of them NVIDIA's OpenCL compiler takes
# (printed when the kernel itself does not build).
PROBES = {
    "asm, =r output": 'uint x; asm("mov.u32 %0, %%laneid;" : "=r"(x)); o[0] = x;',
    "__asm__ volatile": 'uint x; __asm__ volatile("mov.u32 %0, %%laneid;" : "=r"(x)); o[0] = x;',
    "asm volatile, memory clobber": 'uint x; asm volatile("mov.u32 %0, %%laneid;" : "=r"(x) :: "memory"); o[0] = x;',
    "f constraints": 'float y; asm("add.f32 %0, %1, %2;" : "=f"(y) : "f"((float)o[1]), "f"(1.0f)); o[0] = (uint)y;',
    "cvt.rna.tf32 on r": 'uint x; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(x) : "r"(o[1])); o[0] = x;',
    "local address as r": '__local uint4 s[64]; s[get_local_id(0)] = (uint4)(1, 2, 3, 4); barrier(CLK_LOCAL_MEM_FENCE);'
                          ' uint r0, r1, r2, r3; asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"'
                          ' : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"((uint)(size_t)&s[get_local_id(0) % 32]) : "memory");'
                          ' o[get_local_id(0)] = r0 + r1 + r2 + r3;',
    "cp.async": '__local uint4 s[64]; asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: '
                '"r"((uint)(size_t)&s[get_local_id(0)]), "l"(o + 4 * get_local_id(0)), "r"(16) : "memory");'
                ' asm volatile("cp.async.commit_group;" ::: "memory"); asm volatile("cp.async.wait_group 0;" ::: "memory");'
                ' barrier(CLK_LOCAL_MEM_FENCE); o[get_local_id(0)] = s[(get_local_id(0) + 1) % 64].x;',
}


def probe_asm(ocl) -> dict[str, str]:
    import pyopencl as cl

    out = {}
    for name, body in PROBES.items():
        src = "__kernel void probe(__global uint* o) { " + body + " }"
        try:
            cl.Program(ocl.ctx, src).build()
            out[name] = "builds"
        except Exception as e:  # noqa: BLE001
            out[name] = "FAILS: " + " ".join(str(e).split())[-300:]
    return out


def select_tc(dev, mode: str, t: dict) -> None:
    """Make every matmul of the mode's dtype on `dev` run the tc family with parameters `t`:
    also the small products (under params["small_work"] multiply-adds, which would run
    gemm_small.cl) and on a device whose proof switched the family off (to learn why)."""
    dev.params[tc.KEYS[32 if mode == "tf32" else 16]] = t
    dev.params["small_work"] = 0
    dev.tc_reason = None
    dev.force_tf32 = True if mode == "tf32" else None


def log(*a):
    print(*a, flush=True)


def opencl_device(selector: str):
    try:
        return xdev.asarray(np.ones(1, np.float32), backend=selector)._dev, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def cuda_device():
    try:  # (not xdev.available_backends(): that would prove every OpenCL device too)
        return xdev.asarray(np.ones(1, np.float32), backend="cuda")._dev, None
    except Exception as e:  # noqa: BLE001
        return None, f"{type(e).__name__}: {e}"


def bound_ok(got, ref, mag, K, mode, xp=np):
    """Elementwise: |got - ref| <= (K+2) u_acc |a|.|b| + u_out |ref| (the contract's bound)."""
    u_acc = 2.0**-11 if mode == "tf32" else 2.0**-24
    u_out = 2.0**-24 if mode == "tf32" else 2.0**-11
    err = xp.abs(got.astype(xp.float64) - ref)
    lim = (K + 2) * u_acc * mag + u_out * xp.abs(ref) + 1e-30
    bad = ~(err <= lim)
    return int(bad.sum()), float(xp.max(err / lim))


# ---- the CUDA twin --------------------------------------------------------------------------
class CudaTwin:
    """gemm_tc.cl compiled as CUDA (NVRTC through CuPy) with the same -D options and launch."""

    def __init__(self):
        import cupy

        self.cp = cupy
        self.src = "\n".join(p.read_text() for p in (REPO / "bench" / "tc_cuda_prelude.h",
                                                      REPO / "backends" / "opencl" / "tc_ptx.cl",
                                                      REPO / "backends" / "opencl" / "gemm_tc.cl"))
        self.fns = {}

    def fn(self, opts):
        key = tuple(sorted(opts.items()))
        if key not in self.fns:
            mod = self.cp.RawModule(code=self.src, options=("-std=c++17", *(f"-D{k}={v}" for k, v in key)))
            self.fns[key] = mod.get_function("gemm_tc")
        return self.fns[key]

    def matmul(self, opts, a, b):
        """a (..., M, K) @ b (K, N), contiguous CuPy arrays; batch dims of a only."""
        cp = self.cp
        M, K = a.shape[-2:]
        N = b.shape[-1]
        nb = int(np.prod(a.shape[:-2]))
        ce = 16 // a.dtype.itemsize
        lda, ldb = -(-K // ce) * ce, -(-N // ce) * ce
        pa = cp.zeros((nb, M, lda), a.dtype)
        pa[..., :K] = a.reshape(nb, M, K)
        pb = cp.zeros((K, ldb), b.dtype)
        pb[:, :N] = b
        c = cp.empty((nb, M, N), a.dtype)
        t = opts
        nthr = t["WM"] * t["WN"] * 32
        i64, i32 = np.int64, np.int32
        self.fn(opts)(((N + t["BN"] - 1) // t["BN"], (M + t["BM"] - 1) // t["BM"], nb), (nthr,),
                      (c, pa, i64(0), pb, i64(0), i32(M), i32(N), i32(K), i64(lda), i64(ldb), i32(1), i32(nb),
                       i64(0), i64(0), i64(M * lda), i64(0), i64(0), i64(0)))
        return c.reshape(a.shape[:-1] + (N,))

    def matmul_in_place(self, opts, a, b, c):
        """c = a @ b for contiguous square operands whose rows are whole chunks (the timed case)."""
        M, K = a.shape
        N = b.shape[1]
        t = opts
        nthr = t["WM"] * t["WN"] * 32
        i64, i32 = np.int64, np.int32
        self.fn(opts)(((N + t["BN"] - 1) // t["BN"], (M + t["BM"] - 1) // t["BM"], 1), (nthr,),
                      (c, a, i64(0), b, i64(0), i32(M), i32(N), i32(K), i64(K), i64(N), i32(1), i32(1),
                       i64(0), i64(0), i64(0), i64(0), i64(0), i64(0)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("tf32", "f16"), required=True)
    p.add_argument("--opencl", default="opencl", help="OpenCL selector (default: the default OpenCL device)")
    p.add_argument("--n", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeat", type=int, default=5, help="timed calls per side per round")
    p.add_argument("--inner", type=int, default=1,
                   help="GEMMs per timed call, launched back to back (the time is per GEMM): above 1, "
                        "host-side launch costs overlap the GPU's work on every side alike")
    p.add_argument("--variants", default="", help="comma-separated subset of the variant names")
    p.add_argument("--twin-variants", default="default,w2x4",
                   help="variants also built as CUDA (comma-separated; 'none' for none, 'all')")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds: builds and checks stop at 70%% of it (the rest times what passed)")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--ptx", metavar="FILE", help="write the PTX NVIDIA's OpenCL compiler made of the default variant")
    a = p.parse_args(argv)
    mode = a.mode
    tcmode = 32 if mode == "tf32" else 16
    dt = np.dtype(np.float32 if mode == "tf32" else np.float16)
    key = tc.KEYS[tcmode]
    report = {"mode": mode, "n": a.n, "variants": {}, "cublas": {}, "probe": {}}
    t_start = time.time()

    def save():
        report["seconds"] = time.time() - t_start
        if a.json:
            Path(a.json).write_text(json.dumps(report, indent=1, default=str))

    ocl, why = opencl_device(a.opencl)
    if ocl is None:
        log(f"OpenCL unavailable: {why}")
        report["opencl"] = {"unavailable": why}
    else:
        info = ocl.info()
        d = ocl.cl_device
        cc = None
        try:
            cc = f"{d.compute_capability_major_nv}.{d.compute_capability_minor_nv}"
        except Exception:  # noqa: BLE001 - not NVIDIA
            pass
        report["opencl"] = {k: info.get(k) for k in ("key", "name", "platform", "driver", "tensor_cores",
                                                      "tensor_core_reason")}
        report["opencl"].update(cc=cc, local_mem=int(d.local_mem_size), version=d.version.strip(),
                                opencl_c=getattr(d, "opencl_c_version", "?"))
        log(f"OpenCL: {ocl.key} {ocl.name}, CC {cc}, local memory {int(d.local_mem_size)} B, "
            f"tensor cores in xdev: {info.get('tensor_cores')} {info.get('tensor_core_reason') or ''}")
        # The hardware's answer; a proof failure (tc_reason set by the proof) is overridden
        # below, variant by variant, to learn which variants work.
        hw_reason = "not a GPU" if ocl.is_cpu else tc.support(ocl.cand.platform.name, d)
        if ocl.family != "gpu":
            hw_reason = hw_reason or f"the {ocl.family} kernel family is in use"
        if hw_reason:
            why = f"no tensor-core GEMM on this device: {hw_reason}"
            ocl = None
            log(why)
    cuda, cwhy = cuda_device()
    log(f"CUDA: {cuda.key + ' ' + cuda.name if cuda else 'unavailable: ' + str(cwhy)}")
    twin = None
    if cuda is not None and a.twin_variants != "none":
        try:
            twin = CudaTwin()
        except Exception as e:  # noqa: BLE001
            log(f"CUDA twin unavailable: {e}")
    os.environ["XDEV_CUDA_TF32"] = "1" if mode == "tf32" else "0"  # cuBLAS in the same mode

    names = [v for v in (a.variants.split(",") if a.variants else VARIANTS[mode])]
    variants = {}
    for name in names:
        t = {**tc.DEFAULTS[key], **VARIANTS[mode][name]}
        variants[name] = t
        report["variants"][name] = {"params": t, "valid": tc.valid(tcmode, t)}

    # -- 1 and 2: build and check every variant on odd shapes ------------------------------------
    rng = np.random.default_rng(0)
    odd = []
    for batch, M, K, N, trans in ODD_SHAPES:
        ha = rng.uniform(-1, 1, batch + (M, K)).astype(dt)
        hb = rng.uniform(-1, 1, (K, N)).astype(dt)
        a64, b64 = ha.astype(np.float64), hb.astype(np.float64)
        odd.append((ha, hb, trans, a64 @ b64, np.abs(a64) @ np.abs(b64), K))

    def run_ocl(t, ha, hb, trans):
        select_tc(ocl, mode, t)
        xa = xdev.asarray(np.ascontiguousarray(np.swapaxes(ha, -1, -2)), backend=ocl.key).mT if trans else \
            xdev.asarray(ha, backend=ocl.key)
        if gemm.family(ocl, xa.shape[-2], hb.shape[-1], hb.shape[0], dt) != "tc":
            raise RuntimeError("the tensor-core family is not selected")
        c = xdev.matmul(xa, xdev.asarray(hb, backend=ocl.key))
        out = c.numpy()
        if ocl.tc_reason is not None:
            raise RuntimeError(ocl.tc_reason)
        return out

    twin_names = set(variants) if a.twin_variants == "all" else set(a.twin_variants.split(","))
    for name, t in variants.items():
        row = report["variants"][name]
        if not row["valid"]:
            row["opencl"] = row["cuda"] = "invalid parameters (tc.valid)"
            continue
        for side in ("opencl", "cuda"):
            if side == "opencl" and ocl is None:
                row[side] = f"unavailable: {why}"
                continue
            if side == "cuda" and (twin is None or name not in twin_names):
                row[side] = "not built" if twin is not None else "unavailable"
                continue
            if time.time() - t_start > 0.7 * a.budget:
                row[side] = "skipped: the build-and-check share of --budget is spent"
                log(f"{mode} {name:15s} {side:6s} skipped (budget)")
                continue
            t0 = time.time()
            try:
                worst, nbad = 0.0, 0
                for ha, hb, trans, ref, mag, K in odd:
                    if side == "opencl":
                        got = run_ocl(t, ha, hb, trans)
                    else:
                        got = twin.matmul(tc.options(tcmode, t), twin.cp.asarray(ha), twin.cp.asarray(hb)).get()
                    b_, w_ = bound_ok(got, ref, mag, K, mode)
                    nbad += b_
                    worst = max(worst, w_)
                row[side] = {"odd_shapes_bad": nbad, "worst_error_over_bound": worst,
                             "build_and_check_s": time.time() - t0}
                log(f"{mode} {name:15s} {side:6s} odd shapes: {'OK' if nbad == 0 else f'{nbad} BAD'} "
                    f"(worst error/bound {worst:.3g}, {time.time() - t0:.1f} s)")
            except Exception as e:  # noqa: BLE001 - one variant failing must not hide the others
                msg = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
                row[side] = msg
                log(f"{mode} {name:15s} {side:6s} FAILED: {msg}")
                if side == "opencl" and name == "default":
                    report["default_build_log"] = str(e)[:6000]
                    log(str(e)[:3000])
                    report["probe"] = probe_asm(ocl)
                    for k, v in report["probe"].items():
                        log(f"  inline-asm probe {k:30s} {v}")
        save()

    # -- what NVIDIA's compiler made of the default variant: ptxas's report, and the PTX ----------
    if ocl is not None:
        try:
            import pyopencl as cl

            from xdev.backends.opencl.kernels import source

            opts = [f"-D{k}={v}" for k, v in sorted(tc.options(tcmode, variants[names[0]]).items())]
            prg = cl.Program(ocl.ctx, source("gemm_tc.cl").text).build(options=opts + ["-cl-nv-verbose"])
            build_log = prg.get_build_info(ocl.cl_device, cl.program_build_info.LOG)
            lines = [ln.strip() for ln in build_log.splitlines() if ln.strip()]
            report["ptxas_default"] = lines[-12:]
            log("ptxas (default variant): " + " | ".join(lines[-6:]))
            if a.ptx:
                Path(a.ptx).write_bytes(prg.binaries[0])
        except Exception as e:  # noqa: BLE001
            log(f"verbose build of the default variant: {type(e).__name__}: {str(e)[:300]}")

    # -- 3: time n^3, interleaved with cuBLAS --------------------------------------------------------
    n = a.n
    ha = rng.uniform(-1, 1, (n, n)).astype(dt)
    hb = rng.uniform(-1, 1, (n, n)).astype(dt)
    sides = {}
    outs = {}
    if cuda is not None:
        ca, cb = xdev.asarray(ha, backend="cuda"), xdev.asarray(hb, backend="cuda")
        sides["cublas"] = (cuda, lambda: outs.__setitem__("cublas", xdev.matmul(ca, cb)))
    if ocl is not None:
        oa, ob = xdev.asarray(ha, backend=ocl.key), xdev.asarray(hb, backend=ocl.key)
        for name, t in variants.items():
            if isinstance(report["variants"][name].get("opencl"), dict) and \
                    report["variants"][name]["opencl"]["odd_shapes_bad"] == 0:
                def f(t=t, name=name):
                    select_tc(ocl, mode, t)
                    outs["opencl " + name] = xdev.matmul(oa, ob)
                sides["opencl " + name] = (ocl, f)
    if twin is not None:
        cp = twin.cp
        ta, tb = cp.asarray(ha), cp.asarray(hb)
        tcout = {}
        for name, t in variants.items():
            if isinstance(report["variants"][name].get("cuda"), dict) and \
                    report["variants"][name]["cuda"]["odd_shapes_bad"] == 0:
                tcout[name] = cp.empty((n, n), dt)
                sides["cuda-twin " + name] = (cuda, lambda t=t, name=name: (
                    twin.matmul_in_place(tc.options(tcmode, t), ta, tb, tcout[name]),
                    outs.__setitem__("cuda-twin " + name, tcout[name])))
    times = {k: [] for k in sides}
    errors = {}
    for r in range(a.rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            if name in errors:
                continue
            dev, fn = sides[name]
            try:
                fn()
                dev.synchronize()
                run = fn if a.inner == 1 else (lambda fn=fn: [fn() for _ in range(a.inner)])
                times[name].append(statistics.median(dev.elapsed(run, a.repeat)) / a.inner)
            except Exception as e:  # noqa: BLE001
                errors[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
                log(f"timing {name}: {errors[name]}")
    flop = 2.0 * n**3
    results = {}
    for name in sides:
        if name in errors or not times[name]:
            results[name] = {"error": errors.get(name, "no timing")}
            continue
        ts = sorted(times[name])
        med = statistics.median(ts)
        results[name] = {"median_s": med, "min_s": ts[0], "max_s": ts[-1], "rounds": len(ts),
                         "tflops": flop / med / 1e12}
    # -- 4: the n^3 results against float64 on the GPU --------------------------------------------
    if cuda is not None:
        import cupy as cp

        a64, b64 = cp.asarray(ha).astype(cp.float64), cp.asarray(hb).astype(cp.float64)
        ref, mag = a64 @ b64, cp.abs(a64) @ cp.abs(b64)
        for name, out in outs.items():
            got = out if isinstance(out, cp.ndarray) else cp.asarray(out.numpy())
            nbad, worst = bound_ok(got, ref, mag, n, mode, xp=cp)
            results.setdefault(name, {})["n3_bad"] = nbad
            results[name]["n3_worst_error_over_bound"] = worst
        del ref, mag, a64, b64
    report["timing"] = results
    cub = results.get("cublas", {}).get("median_s")
    report["inner"] = a.inner
    log(f"\n=== {mode} GEMM {n}^3, {a.rounds} interleaved rounds x {a.repeat} calls"
        f"{f' of {a.inner} back-to-back GEMMs' if a.inner > 1 else ''}; "
        f"ratio = cuBLAS time / this side's time (cuBLAS {mode} is 1.00)")
    log(f"{'side':28s} {'ms':>9s} {'TFLOP/s':>8s} {'x cuBLAS':>8s} {'spread':>14s} {'n^3 check':>10s}")
    for name, r in sorted(results.items(), key=lambda kv: kv[1].get("median_s", 1e9)):
        if "median_s" not in r:
            log(f"{name:28s} {r.get('error', '')}")
            continue
        ratio = cub / r["median_s"] if cub else float("nan")
        r["ratio_to_cublas"] = ratio
        chk = "" if "n3_bad" not in r else ("OK" if r["n3_bad"] == 0 else f"{r['n3_bad']} BAD")
        log(f"{name:28s} {r['median_s'] * 1e3:9.3f} {r['tflops']:8.1f} {ratio:8.2f} "
            f"{r['min_s'] * 1e3:6.3f}-{r['max_s'] * 1e3:6.3f} {chk:>10s}")
    save()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
