"""Timing method: build separately, warm up, then repeat until enough time is measured."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class Timing:
    median_s: float
    spread_s: float  # interquartile range of the repeats
    repeats: int
    build_s: float  # kernel compilation during the first call (0 when nothing compiled)
    first_s: float  # the first call, compilation included


def measure(dev, fn: Callable[[], Any], target_s: float, min_repeat: int = 3, max_repeat: int = 200) -> Timing:
    """Time fn on dev: first call (builds kernels), one warm-up, then repeats.

    Short calls get more repeats: as many as fit in `target_s`, within the bounds.
    """
    b0 = dev.build_seconds
    t0 = time.perf_counter()
    fn()
    dev.synchronize()
    first = time.perf_counter() - t0
    build = dev.build_seconds - b0
    est = min(dev.elapsed(fn, 1))  # the warm-up, timed to size the repeats
    n = int(min(max_repeat, max(min_repeat, target_s / max(est, 1e-9))))
    times = np.array(dev.elapsed(fn, n))
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return Timing(float(med), float(q3 - q1), n, float(build), float(first))
