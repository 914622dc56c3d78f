"""xdev's own CUDA kernels: the .cu files beside this module, compiled once per device with NVRTC."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cupy
import numpy as np

from ._plan import Launch

SOURCE_DIR = Path(__file__).resolve().parent
# Shapes are run-time arguments, so these options are the whole compilation key.
OPTIONS = ("-std=c++17",)


class KernelBuildError(RuntimeError):
    """A .cu file failed to compile; the message holds the file, the options and NVRTC's log."""


_lock = threading.Lock()
_modules: dict[tuple[int, str, tuple[str, ...]], Any] = {}
_functions: dict[tuple[int, str, str], Any] = {}


def source(name: str) -> str:
    return (SOURCE_DIR / name).read_text()


def function(device_id: int, filename: str, kernel: str) -> tuple[Any, float]:
    """(compiled kernel, seconds spent compiling it now), memoized per (device, source, options).

    The current device must be ``device_id``.
    """
    fkey = (device_id, filename, kernel)
    fn = _functions.get(fkey)
    if fn is not None:
        return fn, 0.0
    with _lock:
        fn = _functions.get(fkey)
        if fn is not None:
            return fn, 0.0
        t0 = time.perf_counter()
        mkey = (device_id, filename, OPTIONS)
        try:
            mod = _modules.get(mkey)
            if mod is None:
                mod = _modules[mkey] = cupy.RawModule(code=source(filename), options=OPTIONS)
            fn = mod.get_function(kernel)  # compiles (NVRTC) and loads on first use
        except cupy.cuda.compiler.CompileException as e:
            _modules.pop(mkey, None)
            log = e.get_message() if hasattr(e, "get_message") else str(e)
            raise KernelBuildError(
                f"{SOURCE_DIR / filename} failed to build with NVRTC (options {' '.join(OPTIONS)}) for "
                f"kernel {kernel}; compiler log:\n{log}"
            ) from e
        _functions[fkey] = fn
    return fn, time.perf_counter() - t0


def launch(device_id: int, plan: Launch, arrays: dict[str, Any]) -> float:
    """Run a planned launch on the current stream; returns the seconds spent compiling first.

    ``arrays`` maps the plan's pointer roles to cupy arrays.
    """
    args: list[Any] = []
    for kind, value in plan.args:
        if kind == "ptr":
            arr = arrays[value]
            # A missing optional operand (bias=None) is passed as a null pointer.
            args.append(np.uint64(0) if arr is None else arr)
        elif kind == "i64":
            args.append(np.int64(value))
        elif kind == "i32":
            args.append(np.int32(value))
        else:  # pragma: no cover - plans only hold these kinds
            raise AssertionError(kind)
    fn, compile_s = function(device_id, plan.source, plan.kernel)
    fn(plan.grid, plan.block, tuple(args), shared_mem=plan.shared_mem)
    return compile_s
