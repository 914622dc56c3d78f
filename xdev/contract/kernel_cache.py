"""Kernel sources and the one memoizing build cache both GPU backends use.

A kernel is built once per (device, source, options): each device owns a KernelCache,
and shapes are run-time arguments, so the options are the whole compilation key.
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from .errors import KernelBuildError

T = TypeVar("T")


class KernelCache(Generic[T]):
    """Built objects (programs, modules, kernels) memoized by key; thread-safe.

    ``build_seconds`` is the total time spent in ``build`` callbacks so far: the benchmark
    reports compilation apart from the timed runs.
    """

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()
        self.build_seconds = 0.0

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        """The object for ``key``, built by ``build()`` on first request only."""
        item = self._items.get(key)
        if item is not None:
            return item
        with self._lock:  # one build per key even when threads ask at once
            item = self._items.get(key)
            if item is None:
                t0 = time.perf_counter()
                item = build()
                self.build_seconds += time.perf_counter() - t0
                self._items[key] = item
        return item

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items


# A compiler's reference to a line of the source it was given: clang/PoCL write
# "<name>:LINE:COL", NVRTC "<name>(LINE)"; <name> is a temporary file or a placeholder.
_LINE_REF = re.compile(
    r"(?P<name>(?:[^\s:()'\"<>]*\.(?:cl|cu))|<source>|<kernel>|<stdin>)"
    r"(?::(?P<colon>\d+)|\((?P<paren>\d+)\))"
)


class KernelSource:
    """The text of a kernel assembled from files (joined by newlines), and its line map."""

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = tuple(Path(f) for f in files)
        texts = [f.read_text() for f in self.files]
        self.text = "\n".join(texts)
        self._starts: list[int] = []  # first line of each file in the joined text
        line = 1
        for t in texts:
            self._starts.append(line)
            line += t.count("\n") + 1  # the file's own lines, then the joining newline

    def locate(self, line: int) -> tuple[str, int]:
        """(real file, line in it) for a line number of the joined text."""
        for f, start in reversed(list(zip(self.files, self._starts))):
            if line >= start:
                return str(f), line - start + 1
        return str(self.files[0]), line

    def map_log(self, log: str) -> tuple[str, list[tuple[str, int]]]:
        """The compiler log with line references rewritten to the real files, and those places."""
        places: list[tuple[str, int]] = []

        def repl(m: re.Match[str]) -> str:
            n = int(m.group("colon") or m.group("paren"))
            f, ln = self.locate(n)
            if (f, ln) not in places:
                places.append((f, ln))
            return f"{f}:{ln}" if m.group("colon") else f"{f}({ln})"

        return _LINE_REF.sub(repl, log), places

    def build_error(self, options: Sequence[str], log: str, *, device: str, compiler: str) -> KernelBuildError:
        annotated, places = self.map_log(log)
        return KernelBuildError(
            str(self.files[-1]), options, log, device=device, compiler=compiler,
            locations=places, annotated_log=annotated,
        )
