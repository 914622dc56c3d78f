"""Kernel parameters per device: a small built-in table, overridden by `python -m xdev.tune`.

Tuned values are stored per (device name, driver version) in
``$XDEV_CACHE_DIR/opencl-tuning.json`` (default ``~/.cache/xdev``), an
xdev.contract.json_store document.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from xdev.contract import env
from xdev.contract.json_store import JsonStore

from .protocol import DeviceDescription


def cache_dir() -> Path:
    return env.cache_dir()


def cache_file() -> Path:
    return env.cache_dir() / "opencl-tuning.json"


def device_id(dev: DeviceDescription) -> str:
    d = dev.cl_device
    return f"{d.name.strip()} | {dev.cand.platform.version.strip()} | {d.driver_version.strip()}"


GPU_TILE = {"TSM": 64, "TSN": 64, "TSK": 16, "WPTM": 4, "WPTN": 4}
# The xl GEMM (gemm_xl.cl): 64 x 64 tiles, 8 x 8 per work-item, 64 work-items; on
# discrete GPUs 128 x 128 tiles of 256 work-items with float4 loads and two local buffers
# (32 KiB), the shape CLBlast's tuner found best on an H100 (128 x 128, 16 x 16 threads).
GPU_XL = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}
GPU_XL_BIG = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}


def defaults(dev: DeviceDescription) -> dict[str, Any]:
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


# Valid ranges of every tuned value: a bad entry (hand-edited, another xdev version, a
# truncated write) must not reach a kernel build (MR=0 divided by zero, NV=1000 compiled
# for minutes).
_INT_RANGES: dict[str, dict[str, tuple[int, int]]] = {
    "gemm": {"MR": (1, 16), "NV": (1, 8), "VW": (2, 16), "VWD": (2, 16)},
    "conv": {"MR": (1, 16), "NV": (1, 8), "VW": (2, 16), "VWD": (2, 16)},
    "gemm_gpu": {"TSM": (4, 256), "TSN": (4, 256), "TSK": (1, 64), "WPTM": (1, 16), "WPTN": (1, 16)},
    "conv_gpu": {"TSM": (4, 256), "TSN": (4, 256), "TSK": (1, 64), "WPTM": (1, 16), "WPTN": (1, 16)},
    "gemm_xl": {"MWG": (4, 512), "NWG": (4, 512), "KWG": (1, 128), "MDIMC": (1, 64), "NDIMC": (1, 64),
                "VWM": (1, 16), "VWN": (1, 16), "PAD": (0, 16), "DB": (0, 1)},
    "conv_xl": {"MWG": (4, 512), "NWG": (4, 512), "KWG": (1, 128), "MDIMC": (1, 64), "NDIMC": (1, 64),
                "VWM": (1, 16), "VWN": (1, 16), "PAD": (0, 16), "DB": (0, 1)},
}
_SCALARS: dict[str, tuple[int, int]] = {"small_work": (0, 1 << 40), "xl_work": (0, 1 << 50), "KB": (1, 4096)}


def validate_entry(entry: object) -> str | None:
    """None if `entry` is a valid tuned-parameter object, else what is wrong with it."""
    if not isinstance(entry, dict):
        return f"an entry that is not an object ({type(entry).__name__})"
    for k, v in entry.items():
        if k in _INT_RANGES:
            if not isinstance(v, dict):
                return f"{k!r} that is not an object"
            for name, x in v.items():
                lo, hi = _INT_RANGES[k].get(name, (None, None))
                if lo is None:
                    return f"unknown parameter {k}.{name}"
                if not isinstance(x, int) or isinstance(x, bool) or not lo <= x <= hi:
                    return f"{k}.{name}={x!r} (expected an int in {lo}..{hi})"
            if "VW" in v and v["VW"] not in (2, 4, 8, 16) or "VWD" in v and v["VWD"] not in (2, 4, 8, 16):
                return f"{k} vector width {v.get('VW')}/{v.get('VWD')} (expected 2, 4, 8 or 16)"
            t = {**{"TSM": 64, "TSN": 64, "WPTM": 4, "WPTN": 4}, **v} if k.endswith("_gpu") else None
            if t and (t["TSM"] % t["WPTM"] or t["TSN"] % t["WPTN"]):
                return f"{k} tiles {v} (TSM must be a multiple of WPTM, TSN of WPTN)"
        elif k in _SCALARS:
            lo, hi = _SCALARS[k]
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                return f"{k}={v!r} (expected an int in {lo}..{hi})"
        elif k != "tuned":
            return f"unknown parameter {k!r}"
    return None


FILE_VERSION = 1  # of the tuning cache's document


def _check_file(data: object) -> str | None:
    return None if isinstance(data, dict) else f"a top level that is {type(data).__name__}, not an object"


def _legacy(doc: object) -> object:
    """A file written before the store's envelope is the same object of entries."""
    return doc if isinstance(doc, dict) else None


def tuning_file() -> JsonStore:
    """The cache file; a bad file or entry is ignored with a warning naming the file and the fix."""
    return JsonStore(cache_file(), "opencl-tuning", FILE_VERSION, what="OpenCL tuning cache", check=_check_file,
                     legacy=_legacy, fix="the built-in parameters are used. Fix: `python -m xdev.tune --reset` "
                                         "(or delete the file), then `python -m xdev.tune` to measure again")


def load_all(warn: bool = True) -> dict[str, Any]:
    """The whole cache file as a dict; {} (with one warning) when it is unreadable."""
    data = tuning_file().read(warn)
    return data if data is not None else {}


def params_for(dev: DeviceDescription) -> dict[str, Any]:
    params = defaults(dev)
    tuned = load_all().get(device_id(dev))
    if tuned is None or tuned == {}:
        return params
    problem = validate_entry(tuned)
    if problem is not None:
        tuning_file().warn(f"{problem} in the entry of {device_id(dev)!r}")
        return params
    for k, v in tuned.items():
        if isinstance(v, dict) and isinstance(params.get(k), dict):
            params[k] = {**params[k], **v}
        elif k in params:
            params[k] = v
    params["tuned"] = True
    return params


def check_writable() -> Path:
    """The cache file's path, after checking its folder can be written (OSError if not)."""
    return tuning_file().check_writable()


def store(dev: DeviceDescription, tuned: dict[str, Any]) -> Path:
    ident = device_id(dev)
    return tuning_file().update(lambda data: {**(data or {}), ident: tuned}, warn=False)


def forget(dev: DeviceDescription) -> Path:
    """Remove `dev`'s entry; a corrupt file is replaced by one without it (always works)."""
    ident = device_id(dev)
    return tuning_file().update(lambda data: {k: v for k, v in (data or {}).items() if k != ident}, warn=False)
