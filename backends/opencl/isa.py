"""What a CPU OpenCL device's compiler emits: its target CPU, instruction set and vector registers.

The CPU kernels keep an MR x NV tile of vector accumulators in registers (params.py), so
the tile that fits depends on the instruction set the driver's compiler targets, which
need not be the host's best one: Debian's PoCL 3.1 compiles for "haswell" (AVX2, 16 ymm
registers) on a Zen 4, pip's PoCL 3.0 for "znver3" (AVX2) even on an AVX-512 Zen 5.
The target comes from, in order:

1. the compiler itself: the proof child (proof.py) runs with ``POCL_DEBUG=llvm``, and
   PoCL logs the ``-target-cpu`` it passes to Clang and the kernel library it links;
2. the device name, where PoCL puts the LLVM CPU name ("pthread-haswell-AMD EPYC");
3. the vector width the proof settled on (16 floats: AVX-512; 8: AVX2-class; 4: SSE
   or NEON, by the host's architecture).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from xdev.contract.machine import cpuinfo

# LLVM CPU names by instruction set (x86-64), as PoCL passes them to -target-cpu.
AVX512_CPUS = frozenset({
    "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
    "tigerlake", "rocketlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d",
    "diamondrapids", "knl", "knm", "znver4", "znver5", "x86-64-v4",
})
AVX2_CPUS = frozenset({
    "haswell", "core-avx2", "broadwell", "skylake", "alderlake", "raptorlake", "meteorlake", "arrowlake",
    "arrowlake-s", "lunarlake", "pantherlake", "gracemont", "sierraforest", "grandridge", "clearwaterforest",
    "znver1", "znver2", "znver3", "bdver4", "x86-64-v3",
})
AVX_CPUS = frozenset({"sandybridge", "corei7-avx", "ivybridge", "core-avx-i", "bdver1", "bdver2", "bdver3", "btver2"})
SSE_CPUS = frozenset({
    "x86-64", "x86-64-v2", "nehalem", "corei7", "westmere", "core2", "penryn", "bonnell", "atom", "silvermont",
    "slm", "goldmont", "goldmont-plus", "tremont", "k8", "k8-sse3", "amdfam10", "barcelona", "btver1",
})
ISA_OF_CPU: dict[str, str] = {
    **{c: "AVX-512" for c in AVX512_CPUS}, **{c: "AVX2" for c in AVX2_CPUS},
    **{c: "AVX" for c in AVX_CPUS}, **{c: "SSE" for c in SSE_CPUS},
}
# Architectural vector registers the compiler can allocate. AVX-512 has 32 (zmm0-31, and
# with AVX-512VL 32 ymm too); AVX/AVX2 and SSE on x86-64 have 16; AArch64 NEON/SVE has 32.
REGISTERS = {"AVX-512": 32, "AVX2": 16, "AVX": 16, "SSE": 16, "NEON": 32}
# Vector width in floats of each instruction set's registers.
LANES = {"AVX-512": 16, "AVX2": 8, "AVX": 8, "SSE": 4, "NEON": 4}
DEFAULT_REGISTERS = 16  # an unknown target: the smallest register file of the common ones

# PoCL names its CPU device "<driver>-<llvm cpu>-<model>" (pthread, cpu or basic).
_NAME = re.compile(r"^(?:pthread|cpu|basic)-(.+)$")
_LOG_CPU = re.compile(r"-target-cpu\s+(\S+)")
_LOG_LIB = re.compile(r"kernel-[A-Za-z0-9_.]+?-[a-z]+-[a-z]+(?:-gnu)?-([A-Za-z0-9_]+)\.bc")


@dataclass(frozen=True)
class Target:
    """A CPU device's compiler target: `isa` (e.g. "AVX2"), the architectural vector
    registers it has, the LLVM CPU name (None if unknown), and how these were learned."""

    isa: str
    vector_registers: int
    target_cpu: str | None
    source: str


def from_log(log: str) -> dict[str, str]:
    """The target CPU and kernel library PoCL names in a ``POCL_DEBUG=llvm`` log ({} if none)."""
    out: dict[str, str] = {}
    cpus = _LOG_CPU.findall(log)
    if cpus:
        out["cpu"] = cpus[-1]
    libs = _LOG_LIB.findall(log)
    if libs:
        out["library"] = libs[-1]
    return out


_LOG_LINE = re.compile(r"^(\*\* Final POCL_DEBUG flags|\[[^]]*\] POCL: in fn |\s*\*\*\* INFO \*\*\*)")


def without_log(stderr: str) -> str:
    """`stderr` without PoCL's informational debug lines (errors and warnings stay)."""
    return "".join(ln for ln in stderr.splitlines(keepends=True) if not _LOG_LINE.match(ln))


def cpu_from_name(name: str) -> str | None:
    """The LLVM CPU name inside a PoCL device name ("pthread-haswell-AMD EPYC" -> "haswell")."""
    m = _NAME.match(name.strip())
    if not m:
        return None
    rest = m.group(1)
    for cpu in sorted(ISA_OF_CPU, key=len, reverse=True):  # "skylake-avx512" before "skylake"
        if rest == cpu or rest.startswith(cpu + "-"):
            return cpu
    return None


def _host_arch() -> str:
    flags = cpuinfo()["flags"]
    if "asimd" in flags or "sve" in flags:
        return "aarch64"
    return "x86" if flags & {"sse2", "avx", "avx2"} else "unknown"


def target(name: str, vector_width: int, compiler: dict[str, str] | None = None) -> Target:
    """The target of a CPU device called `name` whose kernels run `vector_width` floats wide,
    given what the compiler reported (``from_log``), if anything."""
    cpu = (compiler or {}).get("cpu")
    if cpu:
        isa = ISA_OF_CPU.get(cpu.lower())
        source = "compiler target"
        if isa is None and cpu.lower() not in ("generic", "native"):
            # Not x86 (cortex-a72, neoverse-v1, apple-m1 ...) or newer than this table.
            isa = "NEON" if _host_arch() == "aarch64" else None
    else:
        cpu = cpu_from_name(name)
        isa = ISA_OF_CPU.get(cpu) if cpu else None
        source = "device name"
    if isa is None:
        arch = _host_arch()
        isa = ("NEON" if arch == "aarch64" else
               {16: "AVX-512", 8: "AVX2", 4: "SSE"}.get(vector_width) if arch == "x86" else None) or "unknown"
        source = f"vector width {vector_width}"
    regs = REGISTERS.get(isa, DEFAULT_REGISTERS)
    return Target(isa, regs, cpu, source)
