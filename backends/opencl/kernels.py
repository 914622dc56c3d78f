"""Kernel sources: read from the .cl files beside this module, built once per option set."""
from __future__ import annotations

import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyopencl as cl

_HERE = Path(__file__).resolve().parent
BITS = {np.dtype(np.float16): 16, np.dtype(np.float32): 32, np.dtype(np.float64): 64}


class KernelBuildError(RuntimeError):
    """A kernel failed to compile; the message carries the compiler log and the options."""


@lru_cache(maxsize=None)
def source(name: str) -> str:
    """The text of kernel file `name` with common.cl in front."""
    return (_HERE / "common.cl").read_text() + "\n" + (_HERE / name).read_text()


def type_options(in_dtype: np.dtype, out_dtype: np.dtype) -> dict[str, int]:
    """-D options for storage types; float16 and float32 compute in float, float64 in double."""
    real = 64 if BITS[np.dtype(in_dtype)] == 64 or BITS[np.dtype(out_dtype)] == 64 else 32
    return {"REAL_BITS": real, "IN_BITS": BITS[np.dtype(in_dtype)], "OUT_BITS": BITS[np.dtype(out_dtype)]}


class ProgramCache:
    """Built programs of one context, memoized by (file, options); records build seconds."""

    def __init__(self, ctx: cl.Context, device: cl.Device, label: str) -> None:
        self.ctx, self.device, self.label = ctx, device, label
        self._programs: dict[tuple[str, tuple[tuple[str, int], ...]], cl.Program] = {}
        self._lock = threading.Lock()
        self.build_seconds = 0.0  # total spent compiling in this process (bench reports it)

    def get(self, name: str, options: dict[str, int]) -> cl.Program:
        key = (name, tuple(sorted(options.items())))
        prg = self._programs.get(key)
        if prg is not None:
            return prg
        with self._lock:
            prg = self._programs.get(key)
            if prg is None:
                opts = [f"-D{k}={v}" for k, v in key[1]]
                t0 = time.perf_counter()
                try:
                    prg = cl.Program(self.ctx, source(name)).build(options=opts)
                except cl.Error as e:
                    raise KernelBuildError(build_failure(name, opts, self.label, e)) from None
                self.build_seconds += time.perf_counter() - t0
                self._programs[key] = prg
        return prg


def build_failure(name: str, opts: list[str], label: str, err: Exception) -> str:
    log = str(err).strip()
    return (
        f"OpenCL kernel {name} failed to build on {label} with options {' '.join(opts)}.\n"
        f"Compiler output:\n{log}"
    )
