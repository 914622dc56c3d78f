"""What a run says while it runs: once at the start, and when its output is piped, steadily.

On a terminal the benchmark draws a progress bar. Piped into a file or ``tee``, a bar is
invisible, so :class:`Ticker` prints plain lines instead: one per finished workload (seconds
so far, the workload, its devices) and, during a long one, a line at least every
``EVERY_S`` seconds saying what is being measured: a slow run never looks like a hung one.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Iterator, TypeVar
from contextlib import contextmanager

EVERY_S = 10.0

# Said once when finding the backends takes longer than STARTUP_NOTICE_S: the first run on a
# machine proves every OpenCL device in a child process (xdev's kernels built and run once; a
# compiler abort cannot be caught in-process), 20-60 s for two PoCL devices with an empty cache.
STARTUP_NOTICE_S = 1.5
STARTUP_NOTICE = ("finding the backends: each OpenCL device is proven once, xdev's kernels built and run "
                  "in a child process (about 20-60 s the first time on a 2-core CPU; the verdict is cached "
                  "in {cache}, so later runs start at once)")

T = TypeVar("T")


def with_notice(fn: Callable[[], T], say: Callable[[str], None], text: str, after_s: float = STARTUP_NOTICE_S) -> T:
    """fn(), and ``say(text)`` once if it has not returned after ``after_s`` seconds."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(after_s):
            say(text)

    t = threading.Thread(target=watch, name="xdev-bench-notice", daemon=True)
    t.start()
    try:
        return fn()
    finally:
        done.set()
        t.join()


class Ticker:
    """Progress lines for piped output (see the module docstring)."""

    def __init__(self, write: Callable[[str], None] | None = None, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.perf_counter, t0: float | None = None) -> None:
        self._write = write or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        self.every_s = every_s
        self.clock = clock
        self.t0 = clock() if t0 is None else t0  # "seconds so far" count from here
        self._last = self.t0
        self._what = "starting"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def line(self, text: str) -> None:
        with self._lock:
            now = self.clock()
            self._last = now
            self._write(f"[{now - self.t0:5.0f} s] {text}")

    def doing(self, what: str) -> None:
        """What is being measured now (the next heartbeat names it)."""
        self._what = what

    def finished(self, workload: str, devices: list[str]) -> None:
        self.line(f"{workload}: done ({', '.join(devices)})")

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.every_s / 4)):
            if self.clock() - self._last >= self.every_s:
                self.line(f"still measuring {self._what}")

    @contextmanager
    def running(self) -> Iterator["Ticker"]:
        """Heartbeats in a background thread while the block runs."""
        self._thread = threading.Thread(target=self._beat, name="xdev-bench-ticker", daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
