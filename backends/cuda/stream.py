"""CuPy's current stream as a raw pointer, by the cheapest call this CuPy has.

xdev queues everything on CuPy's current stream of the device, and binds its cuBLAS and cuDNN
handles to it again only when it changes: every call compares the pointer, so how it is read
matters for a small call's host cost.
"""
from __future__ import annotations

from typing import Callable

import cupy


def pointer_function() -> Callable[[], int]:
    """A function returning the current stream's pointer: CuPy's own C-level accessor (what its
    kernel launches use) where it follows ``with cupy.cuda.Stream():`` exactly as
    ``cupy.cuda.get_current_stream().ptr`` does, else that. Should the accessor raise later, the
    pointer is read the plain way."""
    def plain() -> int:
        return cupy.cuda.get_current_stream().ptr

    try:
        from cupy_backends.cuda.stream import get_current_stream_ptr as fast  # noqa: PLC0415

        agrees = int(fast()) == int(plain())
        if agrees:
            # A stream of its own made current: an accessor that missed it would put cuBLAS and
            # cuDNN on another stream than the rest of xdev's work.
            with cupy.cuda.Stream() as s:
                agrees = int(fast()) == int(plain()) == int(s.ptr) != 0
            agrees = agrees and int(fast()) == int(plain())
    except Exception:  # another CuPy's layout (CuPy 14: no Python-level accessor), or a fake CuPy
        agrees = False
    if not agrees:
        return plain

    def read() -> int:
        try:
            return fast()
        except Exception:
            return plain()

    return read
