"""What the benchmark ran on: CPU, devices, versions, and each device's peak rate."""
from __future__ import annotations

import os
import platform
import sys
from typing import Any

import numpy as np

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


def gpu_peak_gflops(name: str, dtype: str) -> float | None:
    for key, peaks in GPU_PEAK_TFLOPS:
        if key.lower() in name.lower():
            v = peaks.get(dtype)
            return None if v is None else v * 1000.0
    return None


def cpu_info() -> dict[str, Any]:
    from xdev.backends.numpy.device import cpuinfo

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


def machine(devices: list, dtype: str) -> dict[str, Any]:
    """The JSON 'machine' block: CPU, Python, NumPy/BLAS and every device's description."""
    from xdev.backends.numpy.device import blas_name

    return {
        "cpu": cpu_info(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas_name(),
        "dtype": dtype,
        "devices": [d.info() for d in devices],
    }


def peak_gflops(dev, dtype: str, cpu: dict[str, Any], calibrated_cpu: float | None) -> tuple[float | None, str]:
    """Peak of a device for dtype: GPU table, calibrated CPU rate, or the CPU formula."""
    if not dev.is_cpu:
        p = gpu_peak_gflops(dev.name, dtype)
        if p is not None:
            return p, "datasheet"
        if hasattr(dev, "measured_peak_gflops"):
            return dev.measured_peak_gflops(np.dtype(dtype)), "calibrated FMA loop"
        est = dev.info().get("peak_gflops_est", {}).get(dtype)
        if est:
            return est, "estimate: SMs x lanes x 2 x max clock"
        return None, "unknown device"
    if calibrated_cpu is not None:
        return calibrated_cpu, "calibrated FMA loop (OpenCL on the CPU)"
    return cpu_peak_formula(cpu, dtype)

