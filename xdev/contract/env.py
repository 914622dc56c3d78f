"""Every environment variable xdev reads, in one place (documented in docs/environment.md).

Each is read when asked for, never at import: a program may set them after ``import xdev``.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

BACKEND = "XDEV_BACKEND"
CACHE_DIR = "XDEV_CACHE_DIR"
OPENCL_KERNELS = "XDEV_OPENCL_KERNELS"
CUDA_TF32 = "XDEV_CUDA_TF32"
OPENCL_TF32 = "XDEV_OPENCL_TF32"
CUDNN_FAST = "XDEV_CUDNN_FAST"
CLBLAST_LIB = "XDEV_CLBLAST_LIB"
CUDNN_AUTOTUNE = "XDEV_CUDNN_AUTOTUNE"
CUDNN_AUTOTUNE_LIMIT = "XDEV_CUDNN_AUTOTUNE_LIMIT"
CUDNN_AUTOTUNE_BUDGET_S = "XDEV_CUDNN_AUTOTUNE_BUDGET_S"
DEFAULT_CUDNN_AUTOTUNE_LIMIT = 8  # plans per graph variant, like torch.backends.cudnn.benchmark_limit (10)
DEFAULT_CUDNN_AUTOTUNE_BUDGET_S = 3.0


def _get(name: str) -> str:
    return os.environ.get(name, "").strip()


def backend_spec() -> str:
    """``XDEV_BACKEND`` as given ('' when unset); xdev._config validates it."""
    return _get(BACKEND)


def cache_dir() -> Path:
    """``XDEV_CACHE_DIR``, else ``$XDG_CACHE_HOME/xdev``, else ``~/.cache/xdev``."""
    root = _get(CACHE_DIR) or os.path.join(_get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "xdev")
    return Path(root)


def opencl_kernels() -> str:
    """``XDEV_OPENCL_KERNELS``: 'auto' (default), 'cpu' or 'gpu'; anything else is a ValueError."""
    v = _get(OPENCL_KERNELS).lower() or "auto"
    if v not in ("auto", "cpu", "gpu"):
        raise ValueError(f"{OPENCL_KERNELS}={v!r} is not valid; expected auto, cpu or gpu")
    return v


def cuda_tf32() -> bool:
    """``XDEV_CUDA_TF32=1`` lets float32 matmul and convolution (cuBLAS, cuDNN) use TF32."""
    return _get(CUDA_TF32) == "1"


_ON = ("1", "on", "true", "yes")
_OFF = ("0", "off", "false", "no")


def cudnn_fast() -> bool | None:
    """``XDEV_CUDNN_FAST``: cuDNN's Winograd and FFT engines always (``1``), never (``0``), or,
    unset, as the numeric mode decides (None: allowed in TF32 and float16, not in strict float32).

    ``on``/``off``, ``true``/``false`` and ``yes``/``no`` work too; anything else is a ValueError.
    """
    v = _get(CUDNN_FAST).lower()
    if not v:
        return None
    if v in _ON:
        return True
    if v in _OFF:
        return False
    raise ValueError(f"{CUDNN_FAST}={v!r} is not valid; expected 1 (always allow cuDNN's Winograd/FFT engines), "
                     f"0 (never), or leave it unset (allowed in TF32 and float16, not in strict float32)")


def opencl_tf32() -> bool:
    """``XDEV_OPENCL_TF32``: on (``1``) lets float32 matmul on OpenCL use TF32 tensor cores
    (NVIDIA, compute capability 8.0+), off (``0``) keeps it strict; unset, it follows
    ``XDEV_CUDA_TF32``. ``on``/``off``, ``true``/``false``, ``yes``/``no`` work too."""
    v = _get(OPENCL_TF32).lower()
    if not v:
        return cuda_tf32()
    if v in _ON or v in _OFF:
        return v in _ON
    raise ValueError(f"{OPENCL_TF32}={v!r} is not valid; expected 1 (TF32 allowed) or 0 (strict float32), "
                     f"or unset it to follow {CUDA_TF32}")


_SWITCH_NAMES = (CUDA_TF32, CUDNN_FAST, CUDNN_AUTOTUNE)
_switch_keys: tuple[Any, tuple[Any, ...]] | None = None
_switch_memo: dict[tuple[Any, ...], tuple[bool, bool | None, bool]] = {}


def cuda_switches() -> tuple[bool, bool | None, bool]:
    """(``cuda_tf32()``, ``cudnn_fast()``, ``cudnn_autotune()``): the CUDA backend's per-call switches.

    Read at every call like the three functions, but cheaply: the raw values are looked up in
    os.environ's own mapping (one dictionary lookup each; ~1 us less per variable than
    os.environ.get) and parsed once per distinct set of values, so a changed variable takes
    effect at the next call and a bad value raises the same ValueError every time.
    """
    global _switch_keys
    if _switch_keys is None:
        data = getattr(os.environ, "_data", None)
        encode = getattr(os.environ, "encodekey", None)
        if isinstance(data, dict) and callable(encode):
            _switch_keys = (data, tuple(encode(n) for n in _SWITCH_NAMES))
        else:  # not CPython's os._Environ: parse every time
            _switch_keys = (None, ())
    data, keys = _switch_keys
    if data is None:
        return cuda_tf32(), cudnn_fast(), cudnn_autotune()
    raw = (data.get(keys[0]), data.get(keys[1]), data.get(keys[2]))
    hit = _switch_memo.get(raw)
    if hit is None:
        hit = (cuda_tf32(), cudnn_fast(), cudnn_autotune())  # a ValueError is raised here, never stored
        if len(_switch_memo) > 64:
            _switch_memo.clear()
        _switch_memo[raw] = hit
    return hit


def clblast_lib() -> str:
    """``XDEV_CLBLAST_LIB``: path of CLBlast's shared library ('' when unset: look it up)."""
    return _get(CLBLAST_LIB)


def cudnn_autotune() -> bool:
    """``XDEV_CUDNN_AUTOTUNE``: on unless ``0``/``off``/``false``/``no`` (then the heuristic's first plan runs)."""
    return _get(CUDNN_AUTOTUNE).lower() not in ("0", "off", "false", "no")


def cudnn_autotune_limit() -> int:
    """``XDEV_CUDNN_AUTOTUNE_LIMIT``: plans timed per graph variant (default 8, at least 1)."""
    raw = _get(CUDNN_AUTOTUNE_LIMIT)
    if not raw:
        return DEFAULT_CUDNN_AUTOTUNE_LIMIT
    try:
        return max(1, int(raw))
    except ValueError:
        warnings.warn(f"{CUDNN_AUTOTUNE_LIMIT}={raw!r} is not an integer; using {DEFAULT_CUDNN_AUTOTUNE_LIMIT}",
                      RuntimeWarning, stacklevel=2)
        return DEFAULT_CUDNN_AUTOTUNE_LIMIT


def cudnn_autotune_budget_s() -> float:
    """``XDEV_CUDNN_AUTOTUNE_BUDGET_S``: seconds of plan building per key before the search adds no more (3)."""
    raw = _get(CUDNN_AUTOTUNE_BUDGET_S)
    if not raw:
        return DEFAULT_CUDNN_AUTOTUNE_BUDGET_S
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v > 0:
        warnings.warn(f"{CUDNN_AUTOTUNE_BUDGET_S}={raw!r} is not a positive number of seconds; using "
                      f"{DEFAULT_CUDNN_AUTOTUNE_BUDGET_S}", RuntimeWarning, stacklevel=2)
        return DEFAULT_CUDNN_AUTOTUNE_BUDGET_S
    return v


def pyopencl_ctx() -> str:
    """PyOpenCL's ``PYOPENCL_CTX`` ('' when unset): the default OpenCL device if set."""
    return _get("PYOPENCL_CTX")


OPENCL_POOL_CAP = "XDEV_OPENCL_POOL_CAP"
OPENCL_PROOF = "XDEV_OPENCL_PROOF"
OPENCL_PROOF_TIMEOUT = "XDEV_OPENCL_PROOF_TIMEOUT"
OPENCL_PROOF_FAULT = "XDEV_OPENCL_PROOF_FAULT"


def opencl_pool_cap(global_mem: int) -> int:
    """``XDEV_OPENCL_POOL_CAP``: bytes of freed buffers the OpenCL memory pool keeps.

    Default: a quarter of the device's memory, at most 1 GiB. Bytes, or a size with a
    K/M/G suffix (powers of 1024); 0 keeps nothing.
    """
    v = _get(OPENCL_POOL_CAP)
    if not v:
        return min(global_mem // 4, 1 << 30)
    m = re.fullmatch(r"(\d+)\s*([kKmMgG]?)i?[bB]?", v)
    if not m:
        raise ValueError(f"{OPENCL_POOL_CAP}={v!r} is not a size; use bytes or e.g. 512M, 2G")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def opencl_proof() -> bool:
    """``XDEV_OPENCL_PROOF``: on (default) proves an OpenCL device in a child process; off skips it."""
    v = _get(OPENCL_PROOF).lower()
    if v in ("", "on", "1", "true", "yes"):
        return True
    if v in ("off", "0", "false", "no"):
        return False
    raise ValueError(f"{OPENCL_PROOF}={v!r} is not valid; expected on or off")


DEFAULT_OPENCL_PROOF_TIMEOUT = 60.0


def opencl_proof_timeout() -> float | None:
    """``XDEV_OPENCL_PROOF_TIMEOUT``: seconds a proof step may take, or None when unset (the
    proof then adapts its limit to the steps it has seen, up to DEFAULT_OPENCL_PROOF_TIMEOUT)."""
    v = _get(OPENCL_PROOF_TIMEOUT)
    if not v:
        return None
    try:
        t = float(v)
    except ValueError:
        raise ValueError(f"{OPENCL_PROOF_TIMEOUT}={v!r} is not a number of seconds; set it to e.g. 120, "
                         f"or unset it for the adaptive default") from None
    return t if t > 0 else None


def opencl_proof_fault() -> str:
    """``XDEV_OPENCL_PROOF_FAULT`` (test hook): 'abort', 'abort-first' or ''."""
    return _get(OPENCL_PROOF_FAULT).lower()


def environ_copy() -> dict[str, str]:
    """A copy of the whole environment, for a child process xdev starts (the OpenCL proof)."""
    return dict(os.environ)


# PoCL variables that change the code its compiler generates: an OpenCL proof made under one
# setting says nothing of another (the test suite sets the first).
POCL_CODEGEN = ("POCL_WORK_GROUP_SPECIALIZATION", "POCL_WORK_GROUP_METHOD", "POCL_EXTRA_BUILD_FLAGS")


def pocl_codegen() -> dict[str, str]:
    """The POCL_CODEGEN variables that are set, for the OpenCL proof's cache key."""
    return {k: os.environ[k] for k in POCL_CODEGEN if k in os.environ}


def prepare_pocl() -> None:
    """Pin PoCL's worker threads (``POCL_AFFINITY=1``) unless the user chose otherwise.

    Unpinned PoCL threads were seen sharing one core for whole kernels (GEMM throughput
    halving at random on a 2-core VM). PoCL reads the variable when the OpenCL platforms
    are first enumerated, so the OpenCL backend calls this just before that, not at import.
    """
    os.environ.setdefault("POCL_AFFINITY", "1")


def snapshot(prefixes: tuple[str, ...], names: tuple[str, ...] = ()) -> dict[str, str]:
    """The variables whose name starts with one of ``prefixes`` or is in ``names``, sorted:
    what the benchmark records beside its results (it changes what it measures)."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(prefixes) or k in names}


@contextlib.contextmanager
def for_children(values: Mapping[str, str | None], restore: Iterable[str] = ()) -> Iterator[None]:
    """Set ``values`` in os.environ (None: remove the variable) for child processes started
    inside the block; afterwards these and ``restore`` (what the block's own code may copy
    into os.environ) are as they were before. os.environ is process-wide: the caller
    serializes such blocks."""
    saved = {k: os.environ.get(k) for k in {*values, *restore}}

    def put(vs: Mapping[str, str | None]) -> None:
        for k, v in vs.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    put(values)
    try:
        yield
    finally:
        put(saved)


def numeric_mode(tf32: bool) -> contextlib.AbstractContextManager[None]:
    """A block in which float32 matmul and convolution may use TF32 (``tf32``) or stay
    strict float32, on CUDA and OpenCL alike (``XDEV_CUDA_TF32`` set or unset,
    ``XDEV_OPENCL_TF32`` following it), whatever the environment says; restored afterwards.
    The benchmark's tensor-core rows run in one. Process-wide: the caller serializes blocks."""
    return for_children({CUDA_TF32: "1" if tf32 else None, OPENCL_TF32: None})
