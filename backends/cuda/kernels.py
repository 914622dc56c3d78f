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


_prepared: dict[tuple[int, Launch], tuple[Any, tuple[Any, ...], tuple[tuple[int, str], ...]]] = {}


def launch(device_id: int, plan: Launch, arrays: dict[str, Any]) -> float:
    """Run a planned launch on the current stream; returns the seconds spent compiling first.

    ``arrays`` maps the plan's pointer roles to cupy arrays. Per (device, plan) the kernel and
    the typed scalar arguments are prepared once; a call only fills in the arrays.
    """
    key = (device_id, plan)
    prep = _prepared.get(key)
    compile_s = 0.0
    if prep is None:
        template: list[Any] = []
        slots: list[tuple[int, str]] = []
        for i, (kind, value) in enumerate(plan.args):
            if kind == "ptr":
                template.append(None)
                slots.append((i, value))
            elif kind == "i64":
                template.append(np.int64(value))
            elif kind == "i32":
                template.append(np.int32(value))
            else:  # pragma: no cover - plans only hold these kinds
                raise AssertionError(kind)
        fn, compile_s = function(device_id, plan.source, plan.kernel)
        prep = (fn, tuple(template), tuple(slots))
        if len(_prepared) > 4096:
            _prepared.clear()
        _prepared[key] = prep
    fn, template, slots = prep
    args = list(template)
    for i, role in slots:
        arr = arrays[role]
        # A missing optional operand (bias=None) is passed as a null pointer.
        args[i] = _NULL if arr is None else arr
    fn(plan.grid, plan.block, tuple(args), shared_mem=plan.shared_mem)
    return compile_s


_NULL = np.uint64(0)
