"""What this host is: CPU, BLAS, and the table of peak rates the benchmark compares with.

The one place xdev looks at the machine (the numpy backend names its device from here,
``xdev.info`` and the benchmark describe the host from here).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
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


# OpenBLAS's kernel sets (its core names, as threadpoolctl's `architecture` and
# openblas_get_corename report them) by the instruction set they are written in.
_OPENBLAS_ISA = {
    **dict.fromkeys(("skylakex", "cooperlake", "sapphirerapids"), "AVX-512"),
    **dict.fromkeys(("haswell", "zen"), "AVX2"),
    **dict.fromkeys(("sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"), "AVX"),
    **dict.fromkeys(("nehalem", "prescott", "core2", "penryn", "dunnington", "atom", "barcelona", "opteron",
                     "opteron_sse3", "nano", "katmai", "coppermine", "northwood", "banias"), "SSE"),
    **dict.fromkeys(("armv8", "cortexa53", "cortexa55", "cortexa57", "cortexa72", "cortexa73", "cortexa76",
                     "neoversen1", "neoversen2", "neoversev1", "neoversev2", "thunderx", "thunderx2t99",
                     "thunderx3t110", "tsv110", "emag8180", "falkor", "vortex", "a64fx", "armv8sve"), "NEON"),
}


def blas_isa() -> dict[str, str | None]:
    """The instruction set NumPy's BLAS runs its kernels in: ``{"isa", "core", "source"}``.

    The kernel set comes from threadpoolctl's ``architecture`` (when threadpoolctl is
    installed) or OpenBLAS's own corename; ``isa`` is None for a BLAS that names none (MKL)."""
    core, source = None, None
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            if p.get("user_api") == "blas" and p.get("architecture"):
                core, source = p["architecture"], f"{p.get('internal_api')} {p['architecture']} kernels (threadpoolctl)"
                break
    except Exception:  # noqa: BLE001 - optional; fall back to OpenBLAS's own answer
        pass
    if core is None:
        core = openblas_core()
        source = f"OpenBLAS {core} kernels" if core else None
    isa = _OPENBLAS_ISA.get(core.lower()) if core else None
    return {"isa": isa, "core": core, "source": source}


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
    # Children that have been waited for (the OpenCL device proofs) count as this process's work.
    out["self_cpu_s"] = t.user + t.system + t.children_user + t.children_system
    return out


# ---- how much more memory this process may take ----------------------------------------------
@dataclass(frozen=True)
class MemoryLimit:
    """One limit on this process's memory, measured now: ``limit`` bytes, ``used`` of them in
    use by what the limit counts; ``source`` says which limit it is and where it was read."""

    source: str
    limit: int
    used: int

    @property
    def free(self) -> int:
        return max(0, self.limit - self.used)


def memory_limits() -> list[MemoryLimit]:
    """Every limit on this process's memory that is set, measured now (Linux; elsewhere the
    rlimits only): the address-space and data rlimits (``ulimit -v``, ``ulimit -d``), the
    memory cgroup's limits (v2 ``memory.max`` or v1 ``memory.limit_in_bytes`` of the
    process's cgroup and its ancestors; usage less the reclaimable inactive page cache) and
    the RAM available to new allocations."""
    out: list[MemoryLimit] = []
    statm = _read_head("/proc/self/statm")
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    sizes = [int(v) * page for v in statm.split()] if statm else []
    try:
        import resource
    except ImportError:  # not POSIX
        resource = None  # type: ignore[assignment]
    if resource is not None and sizes:
        for name, ulimit, used, what in (("RLIMIT_AS", "-v", sizes[0], "address space (VmSize)"),
                                         ("RLIMIT_DATA", "-d", sizes[5], "data segments (VmData)")):
            soft = resource.getrlimit(getattr(resource, name))[0]
            if soft != resource.RLIM_INFINITY:
                out.append(MemoryLimit(f"{name} (ulimit {ulimit}; counts the {what})", int(soft), used))
    for folder, limit_file, limit, usage_file, inactive in _cgroup_limits():
        used = _read_int(os.path.join(folder, usage_file)) or 0
        stat = _read(os.path.join(folder, "memory.stat")) or ""
        for line in stat.splitlines():  # page cache the kernel reclaims before the limit bites
            k, _, v = line.partition(" ")
            if k == inactive:
                used -= int(v)
                break
        out.append(MemoryLimit(f"the memory cgroup's limit ({os.path.join(folder, limit_file)})", limit, max(used, 0)))
    avail = _mem_available()
    if avail is not None:
        out.append(MemoryLimit("the RAM available to new allocations (MemAvailable in /proc/meminfo)", avail, 0))
    return out


PROC_CGROUP, CGROUP_ROOT = "/proc/self/cgroup", "/sys/fs/cgroup"  # (tests point them at a fake tree)


@lru_cache(maxsize=1)
def _cgroup_limits() -> tuple[tuple[str, str, int, str, str], ...]:
    """(folder, limit file, limit, usage file, inactive-file key of memory.stat) of this
    process's memory cgroup and of each ancestor that sets a limit, innermost first. Read
    once per process: reading these files costs up to 0.2 ms each in some VMs."""
    text = _read(PROC_CGROUP) or ""
    found: list[tuple[str, str, int, str, str]] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: "0::/path"
            root, files = CGROUP_ROOT, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            root, files = os.path.join(CGROUP_ROOT, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                                 "total_inactive_file")
        else:
            continue
        folder = os.path.normpath(root + path)
        if not os.path.exists(os.path.join(folder, files[0])):
            folder = root  # a cgroup namespace: this process's cgroup is the mount's root
        while folder.startswith(root):
            limit = _read_int(os.path.join(folder, files[0]))
            if limit is not None and limit < 1 << 60:  # not "max" (v2) or v1's page-rounded 2**63
                found.append((folder, files[0], limit, files[1], files[2]))
            if folder == root:
                break
            folder = os.path.dirname(folder)
    return tuple(dict.fromkeys(found))


def _read_int(path: str) -> int | None:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:  # "max"
        return None


def _read_head(path: str, size: int = 512) -> bytes | None:
    """The first ``size`` bytes of a file (raw reads: /proc costs up to 0.2 ms per file in some VMs)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _mem_available() -> int | None:
    head = _read_head("/proc/meminfo")  # MemAvailable is the third line
    for line in (head or b"").split(b"\n"):
        if line.startswith(b"MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None
