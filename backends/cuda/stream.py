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
    kernel launches use) when it agrees with ``cupy.cuda.get_current_stream().ptr``, else that."""
    try:
        from cupy_backends.cuda.stream import get_current_stream_ptr  # noqa: PLC0415

        if int(get_current_stream_ptr()) == int(cupy.cuda.get_current_stream().ptr):
            return get_current_stream_ptr
    except Exception:  # another CuPy's layout, or a fake CuPy
        pass
    return lambda: cupy.cuda.get_current_stream().ptr
