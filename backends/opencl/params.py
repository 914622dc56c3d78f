"""Kernel parameters per device: a small built-in table, overridden by `python -m xdev.tune`.

Tuned values are stored per (device name, driver version) in
``$XDEV_CACHE_DIR/opencl-tuning.json`` (default ``~/.cache/xdev``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xdev.contract import env

if TYPE_CHECKING:  # (the device module imports this one)
    from .device import OpenCLDevice


def cache_file() -> Path:
    return env.cache_dir() / "opencl-tuning.json"


def device_id(dev: OpenCLDevice) -> str:
    d = dev.cl_device
    return f"{d.name.strip()} | {dev.cand.platform.version.strip()} | {d.driver_version.strip()}"


GPU_TILE = {"TSM": 64, "TSN": 64, "TSK": 16, "WPTM": 4, "WPTN": 4}
# The xl GEMM (gemm_xl.cl): 64 x 64 tiles, 8 x 8 per work-item, 64 work-items; on
# discrete GPUs 128 x 128 tiles of 256 work-items with float4 loads and two local buffers
# (32 KiB), the shape CLBlast's tuner found best on an H100 (128 x 128, 16 x 16 threads).
GPU_XL = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}
GPU_XL_BIG = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}


def defaults(dev: OpenCLDevice) -> dict[str, Any]:
    """Parameters of both kernel families, so XDEV_OPENCL_KERNELS can force either."""
    d = dev.cl_device
    tile, xl = dict(GPU_TILE), dict(GPU_XL)
    vendor = d.vendor.lower()
    if not dev.is_cpu and ("nvidia" in vendor or "advanced micro" in vendor or "amd" in vendor):
        tile = {"TSM": 128, "TSN": 128, "TSK": 16, "WPTM": 8, "WPTN": 8}
        xl = dict(GPU_XL_BIG)
    vw = int(d.preferred_vector_width_float)
    vw = vw if vw in (4, 8, 16) else 8
    vwd = max(2, vw // 2)
    # 12 rows x 2 vectors: 24 accumulators of the 32 AVX-512 registers (measured best of
    # 4..14 rows on PoCL/Zen 5); on narrower SIMD, more vectors per row.
    nv = 2 if vw == 16 else 3
    return {
        "gemm": {"MR": 12, "NV": nv, "VW": vw, "VWD": vwd},
        # Conv: 8 channels x 48 pixels, measured best of 2..14 rows on PoCL/Zen 5.
        "conv": {"MR": 8, "NV": 3, "VW": vw, "VWD": vwd},
        "gemm_gpu": tile,
        "gemm_xl": xl,
        "conv_xl": dict(xl),
        # Multiply-adds from which the GPU family's GEMM packs its operands and runs the xl
        # kernel rather than the unpacked tiled one (two extra passes stop mattering).
        "xl_work": 1 << 22,
        # Multiply-adds under which GEMM runs the one-launch simple kernel rather than
        # pack + pack + micro-kernel: on PoCL each launch costs ~0.1 ms, and the simple
        # kernel won up to 64^3 (0.22 vs 0.32 ms) and lost from 96^3 (0.41 vs 0.32 ms).
        "small_work": 1 << 19,
        "KB": 64,  # k-block of the packing kernel
    }


def load_all() -> dict[str, Any]:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def params_for(dev: OpenCLDevice) -> dict[str, Any]:
    params = defaults(dev)
    tuned = load_all().get(device_id(dev))
    if isinstance(tuned, dict) and tuned:
        for k, v in tuned.items():
            if isinstance(v, dict) and isinstance(params.get(k), dict):
                params[k] = {**params[k], **v}
            elif k in params:
                params[k] = v
        params["tuned"] = True
    return params


def store(dev: OpenCLDevice, params: dict[str, Any]) -> Path:
    path = cache_file()
    data = load_all()
    data[device_id(dev)] = params
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    return path
