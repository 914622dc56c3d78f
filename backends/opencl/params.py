"""Kernel parameters per device, from three sources (``source`` in the result says which):

* derived from the device's properties (``defaults``): on CPUs the micro-tile from the
  vector registers of the instruction set its compiler targets (isa.py), on GPUs the xl
  tiles from compute units, local memory, SIMD width and registers;
* the tuning database shipped with xdev (database.py, ``tuning_db.json``);
* ``python -m xdev.tune``'s results, stored per (device name, driver version) in
  ``$XDEV_CACHE_DIR/opencl-tuning.json`` (default ``~/.cache/xdev``), an
  xdev.contract.json_store document.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from xdev.contract import env
from xdev.contract.json_store import JsonStore

from . import database, isa, tc
from .protocol import DeviceDescription


def cache_dir() -> Path:
    return env.cache_dir()


def cache_file() -> Path:
    return env.cache_dir() / "opencl-tuning.json"


def device_id(dev: DeviceDescription) -> str:
    d = dev.cl_device
    return f"{d.name.strip()} | {dev.cand.platform.version.strip()} | {d.driver_version.strip()}"


GPU_TILE = {"TSM": 64, "TSN": 64, "TSK": 16, "WPTM": 4, "WPTN": 4}
GPU_TILE_BIG = {"TSM": 128, "TSN": 128, "TSK": 16, "WPTM": 8, "WPTN": 8}
# The xl GEMM (gemm_xl.cl): 64 x 64 tiles, 8 x 8 per work-item, 64 work-items, for small
# GPUs; derive_xl picks 128 x 128 tiles on large ones.
GPU_XL = {"MWG": 64, "NWG": 64, "KWG": 16, "MDIMC": 8, "NDIMC": 8, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}

# Shares of the vector registers the CPU micro-tiles keep as accumulators, and vectors
# per row. GEMM: 3/4 (the rest holds the NV vectors of B, the broadcast element of A and
# the compiler's temporaries) in rows of 2 vectors, as BLIS's 6x16 AVX2 and 12x32 AVX-512
# SGEMM kernels do; measured best at 6 x 2 on AVX2 (16 registers, Zen 4) and 12 x 2 on
# AVX-512 (32, Zen 5). Conv: 3/4 in rows of 3 vectors (wider pixel tiles, fewer
# re-reads of the unaligned input rows): 4 x 3 on AVX2 (tied with 6 x 2 on Zen 4), 8 x 3
# on AVX-512 (best of 2..14 rows on Zen 5).
GEMM_ACC_SHARE, GEMM_NV = 0.75, 2
CONV_ACC_SHARE, CONV_NV = 0.75, 3


def cpu_tile(registers: int, lanes: int | None, vw: int, share: float, nv: int = 2) -> dict[str, int]:
    """MR rows x NV vectors of accumulators that keep `share` of the vector registers busy.

    Registers are counted in vectors of the kernel's width: a 16-wide vector on an AVX2
    target (8 lanes) takes two of its 16 registers.
    """
    regs = registers * lanes // vw if lanes and lanes < vw else registers
    nv = max(1, min(nv, regs // 4))
    # ... and never more than fit beside the NV vectors of B and the broadcast of A.
    mr = max(1, min(16, int(share * regs) // nv, (regs - nv - 1) // nv))
    return {"MR": mr, "NV": nv}


def cpu_width(dev: Any) -> int:
    """The kernels' vector width in floats: the proof's, else the device's preferred one,
    no wider than the target's registers (a 16-wide vector on AVX2 is two registers)."""
    vw = dev._vector_width or int(dev.cl_device.preferred_vector_width_float)
    vw = vw if vw in (4, 8, 16) else 8
    lanes = isa.LANES.get(dev.target.isa) if dev.target is not None else None
    while lanes and vw > max(4, lanes):
        vw //= 2
    return vw


def derive_cpu(dev: Any) -> tuple[dict[str, Any], str]:
    """CPU micro-tiles from the vector registers of the compiler's target (isa.py)."""
    t = dev.target
    vw = cpu_width(dev)
    lanes = isa.LANES.get(t.isa)
    vwd = max(2, vw // 2)
    gemm = cpu_tile(t.vector_registers, lanes, vw, GEMM_ACC_SHARE, GEMM_NV)
    conv = cpu_tile(t.vector_registers, lanes, vw, CONV_ACC_SHARE, CONV_NV)
    why = f"derived: {t.isa}, {t.vector_registers} vector registers ({t.source})"
    return {"gemm": {**gemm, "VW": vw, "VWD": vwd}, "conv": {**conv, "VW": vw, "VWD": vwd}}, why


def gpu_properties(d: Any) -> dict[str, Any]:
    """What derive_xl reads of an OpenCL GPU: units, local memory, work-group limit, SIMD
    width (NVIDIA's warp, AMD's wavefront) and registers per block (NVIDIA)."""
    exts = str(getattr(d, "extensions", "")).split()

    def ext_attr(ext: str, name: str) -> int | None:
        if ext not in exts:
            return None
        try:
            return int(getattr(d, name))
        except Exception:  # noqa: BLE001 - a driver that lists the extension but not the query
            return None

    warp = ext_attr("cl_nv_device_attribute_query", "warp_size_nv") or \
        ext_attr("cl_amd_device_attribute_query", "wavefront_width_amd")
    return {
        "compute_units": int(d.max_compute_units),
        "local_mem": int(d.local_mem_size),
        "max_work_group": int(d.max_work_group_size),
        "simd_width": warp or 32,
        "registers_per_block": ext_attr("cl_nv_device_attribute_query", "registers_per_block_nv"),
    }


def derive_xl(props: dict[str, Any]) -> dict[str, int]:
    """xl GEMM/conv parameters from a GPU's properties (a GPU the database does not know).

    * 128 x 128 tiles on GPUs with at least 16 compute units (a 2048^2 product then still
      has 256 work-groups to spread), 32 KiB of local memory and 256 work-items per group;
      64 x 64 on smaller ones.
    * Accumulators per work-item: 128 (16 x 8) where a work-item has 255 registers
      (NVIDIA's 64 K registers per block, AMD's 256 VGPRs), else 64 (8 x 8); the
      work-group has tile / accumulators work-items, a multiple of the SIMD width.
    * Two local buffers (one barrier per K slice) when they fit.
    """
    big = props["compute_units"] >= 16 and props["local_mem"] >= 32 * 1024 and props["max_work_group"] >= 256
    if not big:
        return dict(GPU_XL)
    regs = props.get("registers_per_block")
    many_regs = (regs is not None and regs >= 65536) or props.get("simd_width") == 64
    acc = 128 if many_regs else 64
    threads = 128 * 128 // acc
    if threads % props["simd_width"] or threads > props["max_work_group"]:
        return dict(GPU_XL)
    mdimc, ndimc = (8, 16) if threads == 128 else (16, 16)
    t = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": mdimc, "NDIMC": ndimc, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}
    if 2 * 16 * (128 + 128) * 4 > props["local_mem"]:
        t["DB"] = 0
    return t


def defaults(dev: DeviceDescription) -> dict[str, Any]:
    """Parameters of both kernel families (so XDEV_OPENCL_KERNELS can force either), derived
    from the device's properties; ``source`` says so per family."""
    d = dev.cl_device
    props = gpu_properties(d)
    xl = derive_xl(props) if not dev.is_cpu else dict(GPU_XL)
    tile = dict(GPU_TILE_BIG) if xl["MWG"] == 128 else dict(GPU_TILE)
    tc_params, tc_why = tc.derive(props)
    gpu_why = (f"derived: {props['compute_units']} compute units, {props['local_mem'] // 1024} KiB local "
               f"memory, SIMD width {props['simd_width']}")
    if dev.target is not None:
        cpu, cpu_why = derive_cpu(dev)
    else:  # a GPU: the CPU family runs only when forced (XDEV_OPENCL_KERNELS=cpu)
        vw = int(d.preferred_vector_width_float)
        vw = vw if vw in (4, 8, 16) else 8
        cpu = {fam: {**cpu_tile(isa.DEFAULT_REGISTERS, None, vw, share, nv), "VW": vw, "VWD": max(2, vw // 2)}
               for fam, share, nv in (("gemm", GEMM_ACC_SHARE, GEMM_NV), ("conv", CONV_ACC_SHARE, CONV_NV))}
        cpu_why = f"derived: {isa.DEFAULT_REGISTERS} vector registers assumed"
    return {
        **cpu,
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
        "source": {"gemm": cpu_why, "conv": cpu_why, "gemm_gpu": gpu_why, "gemm_xl": gpu_why, "conv_xl": gpu_why,
                   **{k: tc_why for k in tc_params}},
        # The tensor-core GEMM (tc.py; used only where tc.support allows): TF32 and float16.
        **tc_params,
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
    **{k: dict(tc.RANGES) for k in tc.DEFAULTS},
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
            if k in tc.DEFAULTS and not tc.valid(32 if k == tc.KEYS[32] else 16, {**tc.DEFAULTS[k], **v}):
                return f"{k} tiles {v} (not a valid tensor-core GEMM tiling; see backends/opencl/tc.py)"
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
                     legacy=_legacy, fix="the untuned parameters (database or derived) are used. Fix: `python -m xdev.tune --reset` "
                                         "(or delete the file), then `python -m xdev.tune` to measure again")


def load_all(warn: bool = True) -> dict[str, Any]:
    """The whole cache file as a dict; {} (with one warning) when it is unreadable."""
    data = tuning_file().read(warn)
    return data if data is not None else {}


def database_entry(dev: DeviceDescription) -> dict[str, Any] | None:
    """The shipped database's entry for `dev` (database.py), or None."""
    return database.lookup(database.driver_family(dev.cand.platform.name), dev.cl_device.name,
                           database.architecture(dev.cl_device))


def _merge(params: dict[str, Any], entry: dict[str, Any], why: str) -> None:
    for k, v in entry.items():
        if isinstance(v, dict) and isinstance(params.get(k), dict):
            params[k] = {**params[k], **v}
        elif k in params:
            params[k] = v
        else:
            continue
        params["source"][k] = why


def untuned(dev: DeviceDescription) -> dict[str, Any]:
    """What `dev` runs without `python -m xdev.tune`: derived defaults, then the database."""
    params = defaults(dev)
    entry = database_entry(dev)
    if entry is not None:
        _merge(params, entry["params"], database.label(entry))
    return params


def params_for(dev: DeviceDescription) -> dict[str, Any]:
    """Derived defaults, then the shipped database's entry, then `python -m xdev.tune`'s
    results; ``source`` names where each kernel family's parameters came from."""
    params = untuned(dev)
    tuned = load_all().get(device_id(dev))
    if tuned is None or tuned == {}:
        return params
    problem = validate_entry(tuned)
    if problem is not None:
        tuning_file().warn(f"{problem} in the entry of {device_id(dev)!r}")
        return params
    _merge(params, tuned, f"xdev.tune: {cache_file()}")
    params["tuned"] = True
    return params


CPU_KEYS = ("gemm", "conv")  # the parameters the cpu kernel family runs with; the gpu family: the rest


def summary(params: dict[str, Any], family: str | None = None) -> str:
    """One line: which source each kernel's parameters came from (only those the `family`
    runs with, when given)."""
    by: dict[str, list[str]] = {}
    for fam, why in params.get("source", {}).items():
        if family is None or (fam in CPU_KEYS) == (family == "cpu"):
            by.setdefault(why, []).append(fam)
    return "; ".join(f"{', '.join(fams)}: {why}" for why, fams in by.items())


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
