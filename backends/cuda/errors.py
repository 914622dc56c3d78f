"""CuPy's and cuBLAS's errors as xdev's: out-of-memory of any kind is a MemoryError naming the bytes."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

import cupy

from xdev.contract import fork


@contextlib.contextmanager
def guard(dev: Any, what: str) -> Iterator[None]:
    """Run on CudaDevice ``dev``; out-of-memory surfaces as MemoryError naming ``what``."""
    fork.check("cuda")  # BackendUnavailable in a fork() child of a process that had opened CUDA
    with dev._cp:
        try:
            yield
        except Exception as e:
            err = translate(dev, e, lambda: what)
            if err is e:
                raise
            raise err from e


def translate(dev: Any, e: BaseException, what: Callable[[], str]) -> BaseException:
    """What ``guard`` raises for ``e``, for hot paths that skip the context manager.

    ``what`` builds the operation's description only when an error needs it.
    """
    if isinstance(e, cupy.cuda.memory.OutOfMemoryError):
        return MemoryError(oom_message(dev, what(), str(e)))
    if isinstance(e, cupy.cuda.runtime.CUDARuntimeError) and getattr(e, "status", None) == 2:
        return MemoryError(oom_message(dev, what(), str(e)))  # cudaErrorMemoryAllocation
    if type(e).__name__ == "CUBLASError" and "ALLOC_FAILED" in str(e):
        return MemoryError(oom_message(dev, what(), f"cuBLAS could not allocate its workspace ({e})"))
    return e


def oom_message(dev: Any, what: str, detail: str) -> str:
    try:
        free, total = cupy.cuda.runtime.memGetInfo()
        mem = f"; {free:,} of {total:,} bytes of device memory are free"
    except Exception:
        mem = ""
    return (
        f"{dev.key} ({dev.name}) ran out of device memory while {what}: {detail}{mem}. "
        f"Free arrays you no longer need, or work in smaller pieces."
    )

