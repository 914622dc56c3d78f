"""One workload's timing (the method is xdev.bench.noise.measure_interleaved)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Timing:
    median_s: float
    spread_s: float  # interquartile range of the repeats
    repeats: int
    build_s: float  # kernel compilation during the first call (0 when nothing compiled)
    first_s: float  # the first call, compilation included
