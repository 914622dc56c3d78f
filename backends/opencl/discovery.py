"""OpenCL device discovery: the platforms' devices, the selector, and whether a device runs
xdev's kernels (proven in a child process, proof.py) before it is opened; probe() and
reset_tuning, which need no open device. device.py opens what the selector picks."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pyopencl as cl

from xdev.contract import BackendStatus, BackendUnavailable
from xdev.contract import env, fork
from . import isa, params, proof

PROBE_SOURCE = "__kernel void probe(__global float* a) { a[get_global_id(0)] *= 2.0f; }"


@dataclass(frozen=True)
class Candidate:
    p: int
    d: int
    platform: cl.Platform
    device: cl.Device

    @property
    def key(self) -> str:
        return f"opencl:{self.p}:{self.d}"

    @property
    def label(self) -> str:
        return f"{self.device.name.strip()} ({short_version(self.platform.version)})"

    @property
    def is_gpu(self) -> bool:
        return bool(self.device.type & cl.device_type.GPU)


def short_version(version: str) -> str:
    """'OpenCL 3.0 PoCL 3.1+debian  Linux, ..., LLVM 15.0.6, ...' -> 'PoCL 3.1+debian, LLVM 15.0.6'."""
    words = version.replace(",", " ").split()
    core = " ".join(words[2:4]) if len(words) >= 4 and words[0] == "OpenCL" else version.strip()
    llvm = re.search(r"LLVM [0-9.]+", version)
    return core + (f", {llvm.group(0)}" if llvm else "")


def candidates() -> tuple[Candidate, ...]:
    """Every OpenCL device of every platform (enumerated once per process)."""
    fork.check("opencl")  # BackendUnavailable in a fork() child of a process that enumerated them
    return _candidates()


@lru_cache(maxsize=1)
def _candidates() -> tuple[Candidate, ...]:
    fork.driver_opened("opencl", "OpenCL", "its calls block forever there")
    env.prepare_pocl()  # PoCL reads POCL_AFFINITY when the platforms are enumerated
    try:
        platforms = cl.get_platforms()
    except cl.Error as e:
        raise BackendUnavailable(
            f"no OpenCL platform found ({e}); install one: pip install \"xdev[opencl]\" brings "
            f"PoCL for the CPU, GPU vendors ship their own OpenCL drivers"
        ) from None
    out = []
    for p, plat in enumerate(platforms):
        try:
            devs = plat.get_devices()
        except cl.Error:
            devs = []
        out.extend(Candidate(p, d, plat, dev) for d, dev in enumerate(devs))
    return tuple(out)


_usable: dict[str, str | None] = {}
_contexts: dict[str, cl.Context] = {}  # the probe's context, kept for the device to use
_widths: dict[str, int] = {}  # vector width the proof settled on, per device key
_tc_failures: dict[str, str] = {}  # why the proof turned a device's tensor-core GEMM off


class _Shim:
    """A device before it is opened, as params.params_for reads it (protocol.DeviceDescription):
    at vector width `vw`, given what the proof learned of its compiler's target, if anything."""

    def __init__(self, c: Candidate, vw: int | None = None, compiler: dict[str, str] | None = None) -> None:
        self.cand, self.cl_device, self.is_cpu = c, c.device, not c.is_gpu
        self._vector_width = vw
        self.target = cpu_target(c, vw, compiler)


def cpu_target(c: Candidate, vw: int | None, compiler: dict[str, str] | None = None) -> isa.Target | None:
    """A CPU device's compiler target (isa.py); None for GPUs."""
    if c.is_gpu:
        return None
    width = vw or int(c.device.preferred_vector_width_float)
    return isa.target(c.device.name, width, compiler if compiler is not None else proof.compiler_targets.get(c.key))


def unusable_reason(c: Candidate) -> str | None:
    """None if the device builds and runs xdev's kernels (proven in a child process), else why not."""
    if c.key in _usable:
        return _usable[c.key]
    reason = None
    try:
        # (one driver compiles in this process at a time: check_all runs this in threads)
        with _in_process:
            ctx = cl.Context([c.device])
            # A compiler that fails politely (e.g. "unknown target CPU") says so here, in-process.
            cl.Program(ctx, PROBE_SOURCE).build()
    except cl.Error as e:
        msg = str(e)
        reason = f"{c.key} {c.label} cannot build kernels: " + _first_error_line(msg)
        if "unknown target CPU" in msg:
            reason += " -- its compiler is older than this CPU. " + proof.FIX[0].upper() + proof.FIX[1:]
    else:
        family = kernel_family(not c.is_gpu)
        vw, reason = proof.prove(c, family, params.params_for(_Shim(c, compiler={})),
                                 lambda vw, compiler: params.params_for(_Shim(c, vw, compiler)))
        if reason is None:
            _contexts[c.key] = ctx
            _widths[c.key] = int(vw)  # type: ignore[arg-type]
            tc_failure = proof.tc_failure(c)
            if tc_failure:
                _tc_failures[c.key] = tc_failure
    _usable[c.key] = reason
    return reason


_in_process = threading.Lock()


def check_all(cands: list[Candidate] | tuple[Candidate, ...]) -> None:
    """unusable_reason for each candidate not yet checked, their proofs side by side.

    A proof is a child process (15-35 s on a 2-core CPU); one after another, two PoCLs made a
    fresh machine's first call wait for both. Each runs in its own thread here."""
    todo = [c for c in cands if c.key not in _usable]
    if len(todo) < 2:
        return
    threads = [threading.Thread(target=unusable_reason, args=(c,), name=f"xdev-proof-{c.key}", daemon=True)
               for c in todo]
    for t in threads:
        t.start()
    for t in threads:
        t.join()  # (a proof's own limits bound each; an error is raised again by the caller's own call)


def _first_error_line(msg: str) -> str:
    for line in msg.splitlines():
        if "error" in line.lower() and "clBuildProgram" not in line:
            return line.strip()
    return msg.strip().splitlines()[0] if msg.strip() else "unknown error"


def _select(selector: str | None) -> list[Candidate]:
    """Candidates matching a selector, in preference order (GPUs first by default)."""
    cands = list(candidates())
    if not cands:
        raise BackendUnavailable(
            "OpenCL has platforms but no devices; install a driver (pip install \"xdev[opencl]\" "
            "brings PoCL for the CPU)"
        )
    if selector is None or selector.strip() == "":
        return [c for c in cands if c.is_gpu] + [c for c in cands if not c.is_gpu]
    sel = selector.strip()
    parts = sel.split(":")
    if all(x.isdigit() for x in parts) and len(parts) <= 2:
        p = int(parts[0])
        matches = [c for c in cands if c.p == p and (len(parts) == 1 or c.d == int(parts[1]))]
    else:
        low = sel.lower()
        matches = [
            c for c in cands
            if low in f"{c.platform.name} {c.platform.version} {c.device.name}".lower()
        ]
    if not matches:
        listing = "; ".join(f"{c.key} = {c.label}" for c in cands)
        if all(x.isdigit() for x in parts) and len(parts) <= 2:
            n_plat = len({c.p for c in cands})
            where = (f"platform index {parts[0]} is out of range (there are {n_plat} platforms)"
                     if not any(c.p == int(parts[0]) for c in cands) else
                     f"device index {parts[1]} is out of range on platform {parts[0]} (it has "
                     f"{sum(1 for c in cands if c.p == int(parts[0]))} devices)")
            raise ValueError(f"OpenCL selector {selector!r}: {where}; valid devices: {listing}")
        raise ValueError(
            f"no OpenCL device matches {selector!r}; use 'opencl:P:D' indexes or a case-insensitive "
            f"part of the platform or device name. Devices: {listing}"
        )
    return matches

def probe() -> BackendStatus:
    try:
        cands = candidates()
    except BackendUnavailable as e:
        return BackendStatus(False, str(e), ())
    check_all(cands)
    good = [c for c in cands if unusable_reason(c) is None]
    bad = [unusable_reason(c) for c in cands if unusable_reason(c) is not None]
    if not good:
        why = " | ".join(b for b in bad if b) or "no OpenCL devices found"
        return BackendStatus(False, why, ())
    reason = f"pyopencl {cl.VERSION_TEXT}; " + "; ".join(f"{c.key}: {c.label}" for c in good)
    if bad:
        reason += " (skipped: " + " | ".join(b for b in bad if b) + ")"
    return BackendStatus(True, reason, tuple(c.key for c in good))

def kernel_family(is_cpu: bool) -> str:
    """'cpu' (register-blocked, packed panels) or 'gpu' (local-memory tiles)."""
    v = env.opencl_kernels()
    if v == "auto":
        return "cpu" if is_cpu else "gpu"
    return v


def reset_tuning(selector: str | None, every: bool = False) -> list[tuple[str, str, Any]]:
    """Forget tuned parameters without opening a device; works on a corrupt cache file.

    The device `selector` selects (None: PYOPENCL_CTX's, else the default device), i.e. the
    one ``python -m xdev.tune`` with that selector tunes; with `every`, every device the
    selector matches (None: every OpenCL device).
    """
    if selector is None and not every and env.pyopencl_ctx():
        selector = env.pyopencl_ctx()
    matches = _select(selector)
    if not every and len(matches) > 1:
        # As open_device: the first that runs xdev's kernels (its proof verdict is cached).
        check_all(matches)
        usable = [c for c in matches if unusable_reason(c) is None]
        if not usable:
            listing = "; ".join(f"{c.key} = {c.label}" for c in matches)
            raise BackendUnavailable(
                f"no usable OpenCL device matches {selector or 'opencl'!r}, so there is no default "
                f"device to reset; name one with --device opencl:P:D, or pass --all. Devices: {listing}")
        matches = usable[:1]
    return [(c.key, c.label, params.forget(_Shim(c))) for c in matches]  # type: ignore[arg-type]
