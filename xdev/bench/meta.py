"""The JSON's run block: what produced a result file, when, under which environment.

Schema history (docs/bench.md, "JSON schema"):
  1  machine, config, skipped, published, results (files without a "schema" key)
  2  + schema, run (xdev version, git commit, UTC time, argv, environment, threads,
       load), verdicts; rows gain speedup_spread, within_noise, peak_error, reference,
       and round trips transfer_share_spread / transfer_within_noise (share unclamped)
  3  + run.settle, run.load busy/busy_reason/busy_share_limit; machine devices is_cpu,
       matmul_library, library_algorithms, isa, isa_source; CPU rows isa/isa_source; matmul
       rows numeric_mode (and "tensor-cores" rows: TF32/float16 on GPUs); skipped entries
       present; verdict status "inconclusive (busy machine)" with measured_status, claim-3
       numbers like_for_like/why_not/mode/isa_a/isa_b
"""
from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from xdev.contract import env

SCHEMA = {"name": "xdev.bench", "version": 3}

# Environment that changes what a benchmark measures: xdev's own switches, PoCL's and
# OpenBLAS's, the usual thread-count variables, and glibc malloc's tunables (Dask's workers
# start with MALLOC_TRIM_THRESHOLD_ set, which makes every large allocation fresh memory).
ENV_PREFIXES = ("XDEV_", "POCL_", "OPENBLAS_", "OMP_", "MKL_", "CUDA_", "CUDNN_", "CUPY_", "PYOPENCL_", "MALLOC_")
ENV_NAMES = ("GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS", "OCL_ICD_VENDORS")


def schema_version(doc: dict[str, Any]) -> int:
    s = doc.get("schema")
    return int(s.get("version", 1)) if isinstance(s, dict) else 1


def git_commit() -> dict[str, Any] | None:
    """Commit of the checkout xdev was imported from (None when installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, str]:
    return env.snapshot(ENV_PREFIXES, ENV_NAMES)


def threads() -> dict[str, Any]:
    out: dict[str, Any] = {"os_cpu_count": os.cpu_count()}
    try:
        out["affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        out["affinity"] = None
    try:  # what the BLAS under NumPy will use (threadpoolctl when installed)
        from threadpoolctl import threadpool_info

        out["blas"] = [{"library": p.get("internal_api"), "threads": p.get("num_threads")}
                       for p in threadpool_info()]
    except Exception:  # noqa: BLE001 - optional, never fatal
        pass
    return out


def run_block(argv: list[str] | None, load: dict[str, Any] | None = None) -> dict[str, Any]:
    import xdev

    return {
        "xdev_version": xdev.__version__,
        "git": git_commit(),
        "timestamp_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": list(sys.argv[1:] if argv is None else argv),
        "environment": environment(),
        "threads": threads(),
        "load": load,
    }
