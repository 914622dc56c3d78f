"""A CPU device's memory is the process's own: allocations are checked against the process's
real limits before the driver makes them.

PoCL reports the machine's RAM as its global memory and never fails an allocation politely:
when the process's memory runs out (``ulimit -v``, a container's cgroup limit) Debian's
PoCL aborts (``pocl_create_migration_commands: Assertion 'p->mem_ptr != NULL'``) and pip's
segfaults. So before a CPU device allocates, xdev compares the request with the tightest of
the limits ``xdev.contract.machine.memory_limits()`` measures (RLIMIT_AS, RLIMIT_DATA, the
memory cgroup, the available RAM), keeping a reserve for the driver's own allocations and
threads, and raises MemoryError instead.

Measuring reads /proc and /sys files (10 us on a plain Linux, several hundred in some VMs),
so it is not done on every allocation: after a measurement, allocations may take up to
half the headroom it found, for at most REFRESH_S seconds (memory the rest of the process
takes meanwhile is seen by the next measurement), before the next one.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from xdev.contract.machine import MemoryLimit, memory_limits

# Kept free for what the driver and Python allocate themselves (PoCL starts a worker thread
# per core, each with its own stack, at the first kernel launch).
RESERVE_BYTES = (128 << 20) + (8 << 20) * (os.cpu_count() or 1)
REFRESH_S = 0.1


class HostMemory:
    """The memory limits one CPU device's allocations are checked against."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._lock = threading.Lock()
        self._headroom = 0  # bytes that may still be allocated (less the reserve), last measured
        self._since = 0  # bytes asked for since that measurement
        self._when = float("-inf")

    def check(self, nbytes: int, free_held: Callable[[], None]) -> None:
        """Raise MemoryError if allocating ``nbytes`` would take the process past one of its
        memory limits (after ``free_held()`` returned the pool's spare blocks)."""
        with self._lock:
            self._since += nbytes
            if 2 * self._since <= self._headroom and time.monotonic() - self._when < REFRESH_S:
                return
            tight = self._measure(nbytes)
            if tight is not None:
                free_held()
                tight = self._measure(nbytes)
        if tight is not None:
            used = f", {tight.used:,} of them in use" if tight.used else ""
            raise MemoryError(
                f"{self.label}: cannot allocate {nbytes:,} bytes: a CPU device's memory is this "
                f"process's, and {tight.source} is {tight.limit:,} bytes{used}: {tight.free:,} are "
                f"left, of which xdev keeps {RESERVE_BYTES:,} for the OpenCL driver and Python (PoCL "
                f"aborts the process when an allocation fails); free arrays you no longer need "
                f"(del), or raise the limit"
            )

    def _measure(self, nbytes: int) -> MemoryLimit | None:
        """Measure the headroom; the limit ``nbytes`` does not fit under, or None."""
        limits = memory_limits()
        self._when, self._since = time.monotonic(), nbytes
        if not limits:
            self._headroom = 1 << 62
            return None
        tight = min(limits, key=lambda m: m.free)
        self._headroom = tight.free - RESERVE_BYTES
        return tight if nbytes > self._headroom else None
