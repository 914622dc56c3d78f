"""python -m xdev.info: backends, devices, versions, and why a backend is unavailable."""
from __future__ import annotations

import platform
import sys

import numpy as np

import xdev
from xdev._registry import get_device
from xdev.contract import env
from xdev.contract.machine import blas_name


def lines() -> list[str]:
    try:
        default = f"default backend {xdev.get_backend()!r}"
    except (ValueError, TypeError) as e:  # a bad XDEV_BACKEND is reported, not a traceback
        default = f"INVALID: {e}"
    out = [
        f"xdev {xdev.__version__}  Python {platform.python_version()}  NumPy {np.__version__} ({blas_name()})",
        f"platform: {platform.platform()}",
        f"{env.BACKEND}={env.backend_spec()!r} -> {default}",
        "",
    ]
    for name, st in xdev.available_backends().items():
        if not st.available:
            out.append(f"{name:7s} unavailable: {st.reason}")
            continue
        out.append(f"{name:7s} available: {st.reason}")
        try:
            dev = get_device(name)
        except Exception as e:  # noqa: BLE001 - report, never crash the report
            out.append(f"{'':8s}default device failed to open: {e}")
            continue
        info = dev.info()
        details = ", ".join(f"{k}={v}" for k, v in info.items()
                            if k not in ("backend", "device", "name", "params", "params_source", "advice"))
        out.append(f"{'':8s}default device {dev.key}: {dev.name}")
        if details:
            out.append(f"{'':8s}  {details}")
        out.append(f"{'':8s}  conv2d algorithms: {', '.join(dev.conv_algorithms)}")
        if isinstance(info.get("params"), dict):
            out.append(f"{'':8s}  kernel parameters: " + tuned_line(info) + width(info["params"]))
        if info.get("advice"):
            out.append(f"{'':8s}  note: {info['advice']}")
    return out


def tuned_line(info: dict) -> str:
    """Where the parameters of the kernels the device runs came from: the shipped database,
    derived from the device's properties, or `python -m xdev.tune`."""
    line = info.get("params_source") or "?"
    if not info["params"].get("tuned"):
        line += " (python -m xdev.tune measures and stores better ones, if any)"
    return line


def width(params: dict) -> str:
    """The vector width the CPU kernels run at (the device proof may have narrowed it)."""
    g = params.get("gemm")
    if not isinstance(g, dict) or "VW" not in g:
        return ""
    return f"; vector width {g['VW']}" + (f" (float64: {g['VWD']})" if "VWD" in g else "")


def main() -> int:
    print("\n".join(lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
