"""What this host is: CPU, BLAS, and the table of peak rates the benchmark compares with.

The one place xdev looks at the machine (the numpy backend names its device from here,
``xdev.info`` and the benchmark describe the host from here).
"""
from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from typing import Any

import numpy as np


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, Any]:
    """Model, flags, physical cores and clock of this CPU from /proc/cpuinfo (Linux)."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "flags": frozenset(),
                            "physical_cores": None, "mhz": None}
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            phys = ""
            for line in f:
                k, _, v = (x.strip() for x in line.partition(":"))
                if k == "model name":
                    info["model"] = v
                elif k == "flags" and not info["flags"]:
                    info["flags"] = frozenset(v.split())
                elif k == "physical id":
                    phys = v
                elif k == "core id":
                    cores.add((phys, v))
                elif k == "cpu MHz" and info["mhz"] is None:
                    info["mhz"] = float(v)
    except (OSError, ValueError):
        pass
    info["physical_cores"] = len(cores) or None
    return info


def cpu_name() -> str:
    return cpuinfo()["model"]


def blas_name() -> str:
    try:
        cfg = np.show_config(mode="dicts")  # type: ignore[call-arg]
        blas = cfg["Build Dependencies"]["blas"]
        name = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: no dict mode
        name = "unknown BLAS"
    core = openblas_core()
    return f"{name}, {core} kernels" if core else name


def openblas_core() -> str | None:
    """The kernel set a DYNAMIC_ARCH OpenBLAS picked for this CPU (e.g. 'Haswell'), if loaded."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return None
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_", "openblas_get_corename"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn.restype = ctypes.c_char_p
                return fn().decode()
    return None


def blas_advice() -> str | None:
    """A hint when OpenBLAS runs AVX2 kernels on an AVX-512 CPU (it misdetects AMD Zen 5)."""
    core = openblas_core()
    avx512 = "avx512f" in cpuinfo()["flags"]
    if core and avx512 and core.lower() in ("haswell", "zen", "sandybridge"):
        return (f"OpenBLAS chose its {core} (AVX2) kernels on this AVX-512 CPU; setting "
                f"OPENBLAS_CORETYPE=SkylakeX before NumPy is imported selects its AVX-512 kernels "
                f"(about 1.9x the GEMM throughput on a Zen 5)")
    return None


# Peak dense rates in TFLOP/s (vendor datasheets): float32 and float64 on the FP units,
# float16 on tensor cores (what cuBLAS uses for half GEMM). Matched by substring of the
# device name, most specific first.
GPU_PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"float32": 67.0, "float64": 34.0, "float16": 989.5}),
    ("H100 PCIe", {"float32": 51.2, "float64": 25.6, "float16": 756.0}),
    ("H100", {"float32": 67.0, "float64": 34.0, "float16": 989.5}),
    ("A100", {"float32": 19.5, "float64": 9.7, "float16": 312.0}),
    ("L40S", {"float32": 91.6, "float64": 1.4, "float16": 362.0}),
    ("RTX 4090", {"float32": 82.6, "float64": 1.3, "float16": 165.2}),
    ("RTX 3090", {"float32": 35.6, "float64": 0.56, "float16": 71.0}),
    ("V100", {"float32": 15.7, "float64": 7.8, "float16": 125.0}),
    ("T4", {"float32": 8.1, "float64": 0.25, "float16": 65.0}),
    ("TITAN X (Pascal)", {"float32": 11.0, "float64": 0.34, "float16": 0.17}),
]


def datasheet_gflops(name: str, dtype: str) -> float | None:
    """The datasheet peak of a GPU by (part of) its name, in GFLOP/s, or None if not listed."""
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            v = peaks.get(dtype)
            return None if v is None else v * 1000.0
    return None


def cpu_info() -> dict[str, Any]:
    """The benchmark's CPU block: model, cores, clocks, SIMD width, FMA."""
    base = cpuinfo()
    flags = base["flags"]
    info: dict[str, Any] = {"model": base["model"], "logical_cores": os.cpu_count(),
                            "physical_cores": base["physical_cores"] or os.cpu_count(), "mhz": base["mhz"]}
    try:
        with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
            info["max_mhz"] = int(f.read().strip()) / 1000.0
    except (OSError, ValueError):
        info["max_mhz"] = None
    info["simd"] = "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "sse" if flags else "unknown"
    info["fma"] = "fma" in flags
    return info


def cpu_peak_formula(cpu: dict[str, Any], dtype: str) -> tuple[float | None, str]:
    """cores x SIMD lanes x FMA units x 2 x clock: the textbook peak (turbo clocks unknown)."""
    lanes32 = {"avx512": 16, "avx2": 8, "sse": 4}.get(cpu.get("simd", ""), None)
    ghz = (cpu.get("max_mhz") or cpu.get("mhz") or 0) / 1000.0
    if not lanes32 or not ghz:
        return None, "unknown"
    lanes = lanes32 // 2 if dtype == "float64" else lanes32
    fma_units = 2 if cpu.get("fma") else 1
    n = cpu["physical_cores"]
    peak = n * lanes * fma_units * 2 * ghz
    return peak, f"formula: {n} cores x {lanes} lanes x {fma_units} FMA x 2 x {ghz:.2f} GHz"


# Compute capability -> FP32 lanes per SM (CUDA cores): peak estimates for GPUs not in the table.
_FP32_LANES = {(6, 0): 64, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64}
_FP64_PER_FP32 = {(6, 0): 0.5, (7, 0): 0.5, (8, 0): 0.5, (9, 0): 0.5}
_DMMA = {(8, 0), (9, 0)}  # FP64 tensor cores double the FP64 rate for GEMMs
_HMMA_FLOPS_PER_CLK_SM = {(7, 0): 1024, (8, 0): 2048, (9, 0): 4096}  # dense FP16, FP32 accumulate


def cuda_peak_estimate(cc: tuple[int, int], sms: int, clock_ghz: float) -> dict[str, float]:
    """GFLOP/s per dtype from units and clock: SMs x lanes x 2 x clock (FP16 on tensor cores)."""
    fp32 = sms * _FP32_LANES.get(cc, 128) * 2 * clock_ghz
    fp64 = fp32 * _FP64_PER_FP32.get(cc, 1 / 32)
    peaks = {"float32": fp32, "float64": fp64 * (2 if cc in _DMMA else 1)}
    hmma = _HMMA_FLOPS_PER_CLK_SM.get(cc)
    if hmma:
        peaks["float16"] = sms * hmma * clock_ghz
    return peaks


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def load_sample() -> dict[str, Any]:
    """Load average, /proc/stat CPU counters (busy, idle, steal jiffies) and this process's
    CPU time: the benchmark samples it before and after a run (xdev.bench.noise)."""
    out: dict[str, Any] = {"time": time.monotonic(), "cpus": os.cpu_count() or 1}
    la = _read("/proc/loadavg")
    if la:
        out["loadavg"] = [float(x) for x in la.split()[:3]]
    else:
        try:
            out["loadavg"] = list(os.getloadavg())
        except OSError:
            out["loadavg"] = None
    st = _read("/proc/stat")
    if st and st.startswith("cpu "):
        v = [int(x) for x in st.splitlines()[0].split()[1:]]
        v += [0] * (8 - len(v))
        # user nice system idle iowait irq softirq steal (guest time is inside user)
        out["stat"] = {"busy": v[0] + v[1] + v[2] + v[5] + v[6], "idle": v[3] + v[4], "steal": v[7]}
    else:
        out["stat"] = None
    t = os.times()
    out["self_cpu_s"] = t.user + t.system
    return out
