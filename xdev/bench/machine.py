"""What the benchmark ran on: CPU, devices, versions, and each device's peak rate."""
from __future__ import annotations

import platform
import sys
from typing import Any

import numpy as np

from xdev.contract.machine import blas_name, cpu_info, cpu_peak_formula, datasheet_gflops


def machine(sides: list, dtype: str) -> dict[str, Any]:
    """The JSON 'machine' block: CPU, Python, NumPy/BLAS and every side's description."""
    return {
        "cpu": cpu_info(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "blas": blas_name(),
        "dtype": dtype,
        "devices": [d.info() for d in sides],
    }


# A calibration below this fraction of the textbook formula is taken as a compiler that
# did not vectorize, not as the CPU's peak.
CALIBRATION_FLOOR = 0.25


def peak_gflops(dev, dtype: str, cpu: dict[str, Any], calibrated_cpu: float | None) -> tuple[float | None, str]:
    """Peak of a device for dtype: GPU table, calibrated CPU rate, or the CPU formula."""
    if not dev.is_cpu:
        p = datasheet_gflops(dev.name, dtype)
        if p is not None:
            return p, "datasheet"
        p = dev.peak_gflops(np.dtype(dtype))
        if p:
            return p, dev.peak_method
        return None, "unknown device"
    formula, how = cpu_peak_formula(cpu, dtype)
    if calibrated_cpu is not None:
        # The calibration measures what the OpenCL compiler makes of an FMA loop. A compiler
        # that cannot vectorize for this CPU (pip's PoCL 3.0 on AVX-512 AMD parts, proven only
        # at a narrower width) gives a small fraction of the real peak, and every other
        # device's "% peak" would then read far above 100: fall back to the formula.
        if formula is not None and calibrated_cpu < CALIBRATION_FLOOR * formula:
            return formula, (
                f"{how}; the OpenCL calibration gave only {calibrated_cpu:.0f} GFLOP/s "
                f"(its compiler does not vectorize for this CPU)"
            )
        return calibrated_cpu, "calibrated FMA loop (OpenCL on the CPU)"
    return formula, how

