"""Host-mapped staging for OpenCL: pinned host arrays and xdev.prefetch's upload path.

A buffer allocated with CL_MEM_ALLOC_HOST_PTR and kept mapped is the OpenCL form of pinned
memory: GPU drivers (AMD, NVIDIA, Intel) place it in page-locked host memory and copy from
it by DMA at full bus speed; CPU drivers (PoCL) give ordinary host memory, no slower.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

from .array import CLArray, c_strides


def map_host_buffer(dev: Any, nbytes: int) -> np.ndarray | None:
    """A mapped CL_MEM_ALLOC_HOST_PTR buffer as a uint8 array (it keeps the buffer alive), or
    None where the driver refuses such buffers."""
    try:
        buf = cl.Buffer(dev.ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, max(nbytes, 1))
        view, _ = cl.enqueue_map_buffer(dev.queue, buf, cl.map_flags.READ | cl.map_flags.WRITE, 0,
                                        (max(nbytes, 1),), np.uint8, is_blocking=True)
    except cl.Error:
        return None
    return view[:nbytes]


class _Slot:
    __slots__ = ("view", "nbytes", "event", "keep")

    def __init__(self, view: np.ndarray | None, nbytes: int) -> None:
        self.view = view  # mapped staging memory, or None: copy from the caller's array
        self.nbytes = nbytes
        self.event: cl.Event | None = None  # the last copy out of this slot
        self.keep: Any = None  # the host array that copy reads (must outlive it)


class OpenCLStager:
    """xdev.prefetch's uploader: copies run on a second command queue of the device's
    context, from reused host-mapped slots; the compute queue waits with a barrier."""

    def __init__(self, dev: Any, slots: int) -> None:
        self.dev = dev
        self.queue = cl.CommandQueue(dev.ctx, dev.cl_device)
        self.slots: list[_Slot | None] = [None] * max(2, slots)
        self.next = 0
        self.mapped = True  # False once the driver refused a host-mapped buffer

    def _slot(self, nbytes: int) -> _Slot:
        i = self.next
        self.next = (i + 1) % len(self.slots)
        s = self.slots[i]
        if s is not None and s.event is not None:
            s.event.wait()  # the background thread waits, never the consumer
            s.event, s.keep = None, None
        if s is None or s.nbytes < nbytes:
            self._release(s)
            view = map_host_buffer(self.dev, nbytes) if self.mapped else None
            self.mapped = view is not None
            s = self.slots[i] = _Slot(view, nbytes)
        return s

    def upload(self, host: np.ndarray) -> tuple[CLArray, cl.Event | None]:
        shape, dtype, n = tuple(host.shape), host.dtype, host.nbytes
        if n == 0:
            return CLArray(None, 0, shape, c_strides(shape), dtype), None
        if n > self.dev.max_alloc:
            raise MemoryError(f"{self.dev.key} ({self.dev.name}): a batch of {n} bytes exceeds the device's "
                              f"largest buffer ({self.dev.max_alloc} bytes)")
        try:
            # Not from the device's memory pool: that pool belongs to the consumer's thread.
            buf = cl.Buffer(self.dev.ctx, cl.mem_flags.READ_WRITE, n)
        except cl.Error as e:
            raise MemoryError(f"{self.dev.key} ({self.dev.name}): out of device memory allocating {n} bytes "
                              f"for a prefetched batch ({e})") from None
        s = self._slot(n)
        if s.view is not None:
            src = s.view[:n].view(dtype).reshape(shape)
            np.copyto(src, host)  # pageable (or memory-mapped file) -> staging, on this thread
        else:
            src = np.ascontiguousarray(host)
        s.keep = src
        s.event = cl.enqueue_copy(self.queue, buf, src, is_blocking=False)
        self.queue.flush()  # start the copy now, not at the next wait
        return CLArray(buf, 0, shape, c_strides(shape), dtype), s.event

    def ready(self, event: cl.Event) -> None:
        # Kernels enqueued on the compute queue after this run after the copy; the host goes on.
        cl.enqueue_barrier(self.dev.queue, wait_for=[event])

    def _release(self, s: _Slot | None) -> None:
        if s is not None and s.view is not None:
            base: Any = s.view
            while isinstance(base, np.ndarray):
                base = base.base
            if isinstance(base, cl.MemoryMap):
                base.release(self.queue)  # unmap: the buffer itself goes with its last reference
            s.view = None

    def close(self) -> None:
        self.queue.finish()
        for s in self.slots:
            self._release(s)
        self.slots = [None] * len(self.slots)
        self.queue.finish()
