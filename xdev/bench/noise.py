"""Measuring on a machine that other work shares: interleaved repeats, spreads, load.

Three defences, each reported rather than hidden:

* **Interleaving.** The cases being compared (e.g. NumPy and OpenCL on one matmul) are
  timed in alternating blocks, A B B A A B ..., so slow drift (another process starting,
  clock changes) hits every side alike instead of whichever ran second.
* **Spreads.** Every median carries the interquartile range of its repeats; a ratio
  carries the spread that follows from both, and two results whose intervals
  ``median +- spread/2`` overlap are "within noise".
* **Load.** The load average and /proc/stat (busy, steal) are sampled before and after
  the run; CPU used by *other* processes during the run (busy time minus ours) and CPU
  steal are turned into warnings.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from xdev.contract import machine

from .timing import Timing

# Stop repeating a case once its interquartile range is this fraction of its median...
SPREAD_TARGET = 0.03
# ... after at least this many rounds (each round runs every case once, as a block).
MIN_ROUNDS = 3
MAX_ROUNDS = 40
# Warn when, during the run, other processes used more than this share of all CPUs,
# when the hypervisor stole more than this share, or when the 1-minute load average
# before the run exceeded this many runnable tasks per CPU.
OTHERS_WARN = 0.10
STEAL_WARN = 0.03
LOADAVG_WARN = 0.5
# Above this share of all CPUs taken from the run (other processes plus steal), the lecture
# claims' verdicts read "inconclusive (busy machine)": with another process at ~80% of one of
# two cores, claim 3 came out "mixed", "supported", "mixed" across four runs.
BUSY_SHARE = 0.25


@dataclass
class Case:
    """One callable to time on one device, with its samples as they accumulate."""
    dev: Any
    fn: Callable[[], Any]
    label: str = ""
    samples: list[float] = field(default_factory=list)
    block: int = 1  # calls per round
    build_s: float = 0.0
    first_s: float = 0.0

    def rel_spread(self) -> float:
        if len(self.samples) < 3:
            return float("inf")
        q1, med, q3 = np.percentile(self.samples, [25, 50, 75])
        return float((q3 - q1) / med) if med > 0 else float("inf")

    def timing(self) -> Timing:
        q1, med, q3 = np.percentile(self.samples, [25, 50, 75])
        return Timing(float(med), float(q3 - q1), len(self.samples), self.build_s, self.first_s)


def first_call(case: Case) -> float:
    """The untimed first call (builds kernels), then one timed warm-up; returns its time."""
    dev = case.dev
    b0 = dev.build_seconds
    t0 = time.perf_counter()
    case.fn()
    dev.synchronize()
    case.first_s = time.perf_counter() - t0
    case.build_s = dev.build_seconds - b0
    return min(dev.elapsed(case.fn, 1))


class Settler:
    """Waits, between blocks of two CPU sides, until this process's worker threads are idle.

    OpenBLAS's threads spin for about 2^28 cycles after a call (~0.1 s), libgomp's (torch)
    and PoCL's for less; a block started while they spin shares the cores with them (a PoCL
    block started 50 ms after NumPy's measured 0.61x NumPy, one started after 200 ms 0.95x).
    How long they spin depends on the library, the machine and the load, so it is measured:
    the process's CPU time (all threads) is read every WINDOW_S, and the wait ends after
    QUIET windows in a row in which it used less than IDLE_CORES, or at MAX_S. The waits are
    kept (``summary()``) for the JSON, so a run shows what its pauses cost.
    """

    WINDOW_S = 0.003
    QUIET = 2  # windows in a row: a spinning thread descheduled for one window is not idle
    IDLE_CORES = 0.05  # an idle process (this loop's own wake-ups) uses well under 1%
    MAX_S = 0.5

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.capped = 0

    def __call__(self) -> float:
        t0 = time.perf_counter()
        c0, w0, quiet = time.process_time(), t0, 0
        while True:
            time.sleep(self.WINDOW_S)
            c1, w1 = time.process_time(), time.perf_counter()
            quiet = quiet + 1 if c1 - c0 <= self.IDLE_CORES * (w1 - w0) else 0
            if quiet >= self.QUIET or w1 - t0 >= self.MAX_S:
                break
            c0, w0 = c1, w1
        waited = w1 - t0
        self.waits.append(waited)
        self.capped += quiet < self.QUIET
        return waited

    def summary(self) -> dict[str, Any]:
        w = self.waits
        return {"waits": len(w), "total_s": float(sum(w)), "median_s": float(np.median(w)) if w else None,
                "max_s": max(w) if w else None, "capped": self.capped, "max_allowed_s": self.MAX_S}


def measure_interleaved(cases: list[Case], target_s: float, repeat: int | None = None,
                        spread_target: float = SPREAD_TARGET, settle: Callable[[], float] | None = None,
                        on_block: Callable[[Case, int], None] | None = None) -> list[Timing]:
    """Time every case in rounds; within a round each case runs one block of calls.

    The order within a round alternates (A B, then B A) so neither case always follows
    the other. With ``repeat``: exactly that many rounds of one call each. Otherwise each
    block is sized to about target_s / 4, and rounds stop once every case's spread is
    within ``spread_target`` (after MIN_ROUNDS) or ``target_s`` per case is spent.
    ``settle()`` (a Settler) runs between blocks of different devices: BLAS and PoCL worker
    threads spin after a call and would slow the next device's block down.
    ``on_block(case, round)`` is told before each block (progress reports).
    """
    for c in cases:
        est = first_call(c)
        c.block = 1 if repeat else int(min(50, max(1, round(target_s / 4 / max(est, 1e-9)))))
    rounds = repeat or MAX_ROUNDS
    budget = target_s * len(cases)
    spent = 0.0
    for r in range(rounds):
        order = cases if r % 2 == 0 else cases[::-1]
        prev = None
        for c in order:
            if settle is not None and prev is not None and c.dev is not prev:
                settle()
            prev = c.dev
            if on_block is not None:
                on_block(c, r)
            t = c.dev.elapsed(c.fn, c.block)
            c.samples.extend(t)
            spent += sum(t)
        if repeat:
            continue
        if r + 1 >= MIN_ROUNDS and (spent >= budget or all(c.rel_spread() <= spread_target for c in cases)):
            break
    return [c.timing() for c in cases]


# -- comparing two results ----------------------------------------------------------------

def overlaps(med_a: float, spread_a: float, med_b: float, spread_b: float) -> bool:
    """Do the intervals median +- spread/2 of two timings overlap?"""
    return abs(med_a - med_b) <= (spread_a + spread_b) / 2


def ratio(base_med: float, base_spread: float, med: float, spread: float) -> tuple[float, float, bool]:
    """Throughput of (med) relative to (base_med): base/med, its spread, within noise?

    The ratio's spread is a half-width, like each timing's interval median +- IQR/2: the
    two relative half-widths added in quadrature (first-order error propagation).
    """
    r = base_med / med
    rel = ((base_spread / 2 / base_med) ** 2 + (spread / 2 / med) ** 2) ** 0.5
    return r, r * rel, overlaps(base_med, base_spread, med, spread)


def fmt_ratio(r: float | None, spread: float | None, noise: bool | None) -> str:
    if r is None:
        return ""
    s = f"{r:.2f}" + (f"±{spread:.2f}" if spread is not None else "")
    return s + (" ~" if noise else "")


# -- system load ---------------------------------------------------------------------------

def sample_load() -> dict[str, Any]:
    """Load average, /proc/stat CPU counters (jiffies) and this process's CPU time."""
    return machine.load_sample()


def summarize_load(before: dict[str, Any], after: dict[str, Any],
                   loadavg_before: list[float] | None = None) -> dict[str, Any]:
    """Shares of all CPUs during the run: ours, other processes', stolen; and warnings.
    ``loadavg_before``: the load average when the run started, if ``before`` was sampled later."""
    cpus = before["cpus"]
    wall = max(after["time"] - before["time"], 1e-9)
    s: dict[str, Any] = {"cpus": cpus, "wall_s": wall, "loadavg_before": loadavg_before or before.get("loadavg"),
                         "loadavg_after": after.get("loadavg"), "self_share": None, "others_share": None,
                         "steal_share": None, "warnings": []}
    s["self_share"] = (after["self_cpu_s"] - before["self_cpu_s"]) / (wall * cpus)
    if before.get("stat") and after.get("stat"):
        d = {k: after["stat"][k] - before["stat"][k] for k in before["stat"]}
        total = sum(d.values())
        if total > 0:
            s["steal_share"] = d["steal"] / total
            s["others_share"] = max(0.0, d["busy"] / total - s["self_share"])
    la = s["loadavg_before"]
    if la and la[0] > LOADAVG_WARN * cpus:
        s["warnings"].append(f"the machine was busy before the run: load average {la[0]:.2f} on {cpus} CPUs")
    if s["others_share"] is not None and s["others_share"] > OTHERS_WARN:
        s["warnings"].append(f"other processes used {100 * s['others_share']:.0f}% of the {cpus} CPUs "
                             "during the run")
    if s["steal_share"] is not None and s["steal_share"] > STEAL_WARN:
        s["warnings"].append(f"the hypervisor took {100 * s['steal_share']:.0f}% of CPU time (steal)")
    taken = (s["others_share"] or 0.0) + (s["steal_share"] or 0.0)
    s["busy_share_limit"] = BUSY_SHARE
    s["busy"] = taken > BUSY_SHARE
    s["busy_reason"] = (f"other processes and the hypervisor took {100 * taken:.0f}% of the {cpus} CPUs during "
                        f"the run (above {100 * BUSY_SHARE:.0f}%)") if s["busy"] else None
    return s
