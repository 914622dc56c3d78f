"""Work done once per test run and shared by every test module and pytest-xdist worker.

A host build of the CUDA or tensor-core kernels' emulation takes seconds of g++ each; with a
module-scoped fixture every module that uses it, and every xdist worker that runs one of its
tests, paid for it again. Here the first to need a build makes it under a file lock; the
others wait for it and reuse it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder of this test run, the same for every xdist worker (a worker's base temporary
    folder is a subfolder of the run's)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def exclusive(lock: Path) -> Iterator[None]:
    """Held by one process (and thread) at a time: a build made inside is made once."""
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # (closing the file releases the lock)


def build_once(exe: Path, build) -> Path:
    """``exe``, after ``build(tmp)`` wrote it to ``tmp`` (renamed into place when done) unless
    another process or module already has: a half-written file is never taken for a build."""
    with exclusive(exe.with_name(exe.name + ".lock")):
        if not exe.exists():
            tmp = exe.with_name(exe.name + f".tmp{os.getpid()}")
            build(tmp)
            os.replace(tmp, exe)
    return exe
