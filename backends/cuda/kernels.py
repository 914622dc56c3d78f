"""xdev's own CUDA kernels: the .cu files beside this module (common.cuh in front), compiled once per
device with NVRTC."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import cupy
import numpy as np

from xdev.contract.kernel_cache import KernelCache, KernelSource

from .launch import Launch

SOURCE_DIR = Path(__file__).resolve().parent
# Shapes are run-time arguments, so these options are the whole compilation key.
OPTIONS = ("-std=c++17",)


@lru_cache(maxsize=None)
def source(name: str) -> KernelSource:
    """Kernel file `name` with common.cuh in front (compiler line numbers map back to each)."""
    return KernelSource([SOURCE_DIR / "common.cuh", SOURCE_DIR / name])


class Kernels:
    """The kernels of one device: a module per (.cu file, options), a function per kernel name.

    Methods run with the device current (CudaDevice's guard).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.modules: KernelCache[Any] = KernelCache()
        self.functions: KernelCache[Any] = KernelCache()
        self._prepared: dict[Launch, tuple[Any, tuple[Any, ...], tuple[tuple[int, str], ...]]] = {}

    @property
    def build_seconds(self) -> float:
        """Seconds spent compiling (NVRTC compiles a module at its first get_function)."""
        return self.functions.build_seconds

    def function(self, filename: str, kernel: str) -> Any:
        src = source(filename)

        def build() -> Any:
            mod = self.modules.get((filename, OPTIONS), lambda: cupy.RawModule(code=src.text, options=OPTIONS))
            try:
                return mod.get_function(kernel)  # compiles (NVRTC) and loads on first use
            except cupy.cuda.compiler.CompileException as e:
                log = e.get_message() if hasattr(e, "get_message") else str(e)
                raise src.build_error(OPTIONS, log, device=self.label, compiler="NVRTC") from e

        return self.functions.get((filename, kernel, OPTIONS), build)

    def launch(self, plan: Launch, arrays: dict[str, Any]) -> None:
        """Run a planned launch on the current stream; ``arrays`` maps the plan's pointer roles.

        Per plan, the kernel and the typed scalar arguments are prepared once; a call only
        fills in the arrays (the plans themselves are memoized by launch.py).
        """
        prep = self._prepared.get(plan)
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
            prep = (self.function(plan.source, plan.kernel), tuple(template), tuple(slots))
            if len(self._prepared) > 4096:
                self._prepared.clear()
            self._prepared[plan] = prep
        fn, template, slots = prep
        args = list(template)
        for i, role in slots:
            arr = arrays[role]
            # A missing optional operand (bias=None) is passed as a null pointer.
            args[i] = _NULL if arr is None else arr
        fn(plan.grid, plan.block, tuple(args), shared_mem=plan.shared_mem)


_NULL = np.uint64(0)
