"""Device-side timing for the benchmark: CUDA events around the work."""
from __future__ import annotations

from typing import Any, Callable

import cupy


def elapsed(dev: Any, fn: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds per call between CUDA events recorded on the current stream around ``fn``."""
    out: list[float] = []
    with dev._cp:
        dev.synchronize()
        stream = cupy.cuda.get_current_stream()
        for _ in range(repeat):
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            out.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    return out
