"""The fork rule: a GPU/OpenCL driver opened in a process is unusable in that process's
``fork()`` children (docs/api.md, "Processes").

A driver keeps threads, locks and device contexts that ``fork()`` does not copy faithfully:
an OpenCL call in such a child blocks forever (PoCL waits for worker threads that do not
exist there), a CUDA call fails with an initialization error. A backend calls
:func:`driver_opened` when it first talks to its driver and :func:`check` before each call
into it; in a ``fork()`` child of a process that had opened that driver, ``check`` raises
BackendUnavailable naming the ``spawn`` and ``forkserver`` start methods, instead of the
hang. A child of a process that never opened the driver opens its own and works. NumPy
survives ``fork()``: the numpy backend works in every child.
"""
from __future__ import annotations

import os

from .errors import BackendUnavailable

_opened: dict[str, tuple[str, str]] = {}  # backend -> (driver, what fork() does to it), opened here
_inherited: dict[str, tuple[str, str, int]] = {}  # the same, inherited from the parent: + its pid


def driver_opened(backend: str, driver: str, after_fork: str) -> None:
    """Record that ``backend`` has opened ``driver`` in this process (``after_fork``: what
    the driver does in a fork() child, for the message); raises like :func:`check`."""
    check(backend)
    _opened.setdefault(backend, (driver, after_fork))


def check(backend: str) -> None:
    """BackendUnavailable if this process inherited ``backend``'s driver through fork()."""
    if _inherited and backend in _inherited:
        raise BackendUnavailable(message(backend))


def inherited(backend: str) -> bool:
    """Whether this process is a fork() child of one that had opened ``backend``'s driver."""
    return backend in _inherited


def message(backend: str) -> str:
    driver, after_fork, parent = _inherited[backend]
    return (
        f"the {backend} backend cannot be used in this process: it was started by fork() from "
        f"process {parent} after that process had opened {driver}, which does not survive fork() "
        f"({after_fork}). Start worker processes with the 'spawn' or 'forkserver' start method: "
        f"multiprocessing.get_context('spawn').Pool(...), "
        f"ProcessPoolExecutor(mp_context=multiprocessing.get_context('spawn')), or "
        f"multiprocessing.set_start_method('spawn') once at the start of the program. The numpy "
        f"backend works in this process"
    )


def _after_fork_in_child() -> None:
    parent = os.getppid()
    for backend, (driver, after_fork) in _opened.items():
        _inherited.setdefault(backend, (driver, after_fork, parent))
    _opened.clear()


if hasattr(os, "register_at_fork"):  # POSIX; Windows has no fork()
    os.register_at_fork(after_in_child=_after_fork_in_child)
