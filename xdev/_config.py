"""Which backend a call runs on: argument, context, inputs, set_backend, XDEV_BACKEND, numpy."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from ._registry import get_device, split_selector
from .contract import env

# Context-local choice: each thread (and each asyncio task) starts with None.
_context: contextvars.ContextVar[str | None] = contextvars.ContextVar("xdev_backend", default=None)
_global: str | None = None  # set by set_backend; else XDEV_BACKEND, read at first use


def _default_spec() -> str:
    global _global
    if _global is None:
        spec = env.backend_spec()
        if spec:
            try:
                split_selector(spec)
            except ValueError as e:
                raise ValueError(f"{env.BACKEND}={spec!r} is not valid: {e}") from None
        _global = spec or "numpy"
    return _global


def set_backend(spec: str) -> None:
    """Set the process-wide default backend, e.g. ``"opencl"`` or ``"cuda:1"``.

    The name is checked now; the device is opened on first use.
    """
    global _global
    split_selector(spec)
    _global = spec.strip()


def get_backend() -> str:
    """The backend name a call without Array inputs would use now (``"numpy"``, ...)."""
    spec = _context.get() or _default_spec()
    return split_selector(spec)[0]


@contextlib.contextmanager
def use_backend(spec: str) -> Iterator[None]:
    """Run the block on ``spec``; nests, and is local to the thread or task."""
    split_selector(spec)
    token = _context.set(spec.strip())
    try:
        yield
    finally:
        _context.reset(token)


def default_device():
    return get_device(_default_spec())
