"""Host-mapped staging for OpenCL: pinned host arrays and xdev.prefetch's upload path.

A buffer allocated with CL_MEM_ALLOC_HOST_PTR and kept mapped is the OpenCL form of pinned
memory: GPU drivers (AMD, NVIDIA, Intel) place it in page-locked host memory and copy from
it by DMA at full bus speed; CPU drivers (PoCL) give ordinary host memory, no slower.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

from xdev.contract.staging import Slot, SlotPool

from .array import CLArray, c_strides


def map_host_buffer(dev: Any, nbytes: int, queue: Any = None) -> np.ndarray | None:
    """A mapped CL_MEM_ALLOC_HOST_PTR buffer as a uint8 array (it keeps the buffer alive, and
    dropping it unmaps), or None where the driver refuses such buffers. ``queue``: the queue
    that maps it (default: the device's compute queue, which waits for its kernels first)."""
    try:
        buf = cl.Buffer(dev.ctx, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, max(nbytes, 1))
        view, _ = cl.enqueue_map_buffer(queue or dev.queue, buf, cl.map_flags.READ | cl.map_flags.WRITE, 0,
                                        (max(nbytes, 1),), np.uint8, is_blocking=True)
    except cl.Error:
        return None
    return view[:nbytes]


class OpenCLStager:
    """xdev.prefetch's uploader: copies run on a second command queue of the device's
    context, from reused host-mapped buffers (filled here from pageable memory, or by
    npy_batches' readers straight from disk: ``stage``); the compute queue waits with a
    barrier."""

    def __init__(self, dev: Any, slots: int) -> None:
        self.dev = dev
        self.queue = cl.CommandQueue(dev.ctx, dev.cl_device)
        self.mapped = True  # False once the driver refused a host-mapped buffer
        self.pool = SlotPool(slots, self._alloc, lambda ev: ev.wait(), self._unmap)

    def _check_host_memory(self, nbytes: int) -> None:
        # A CPU device's buffers are the process's memory (host_memory.py): MemoryError before
        # PoCL aborts. Not dev.check_host_memory: its pool belongs to the consumer's thread.
        if self.dev.host_memory is not None:
            self.dev.host_memory.check(nbytes, lambda: None)

    def _alloc(self, nbytes: int) -> np.ndarray | None:
        if not self.mapped:
            return None
        self._check_host_memory(nbytes)
        # Mapped on the copy queue: a reader thread must not wait for the compute queue's kernels.
        view = map_host_buffer(self.dev, nbytes, self.queue)
        self.mapped = view is not None
        return view

    def _unmap(self, view: np.ndarray) -> None:
        base: Any = view
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, cl.MemoryMap):
            base.release(self.queue)  # the buffer itself goes with its last reference

    def _device_buffer(self, nbytes: int) -> cl.Buffer:
        if nbytes > self.dev.max_alloc:
            raise MemoryError(f"{self.dev.key} ({self.dev.name}): a batch of {nbytes} bytes exceeds the device's "
                              f"largest buffer ({self.dev.max_alloc} bytes)")
        self._check_host_memory(nbytes)
        try:
            # Not from the device's memory pool: that pool belongs to the consumer's thread.
            return cl.Buffer(self.dev.ctx, cl.mem_flags.READ_WRITE, nbytes)
        except cl.Error as e:
            raise MemoryError(f"{self.dev.key} ({self.dev.name}): out of device memory allocating {nbytes} bytes "
                              f"for a prefetched batch ({e})") from None

    def _copy(self, buf: cl.Buffer, s: Slot, src: np.ndarray) -> tuple[CLArray, cl.Event]:
        try:
            ev = cl.enqueue_copy(self.queue, buf, src, is_blocking=False)
            self.queue.flush()  # start the copy now, not at the next wait
        except BaseException:
            self.pool.give_back(s)
            raise
        self.pool.copying(s, ev, keep=src)  # the copy reads `src`: it must outlive it
        shape = tuple(src.shape)
        return CLArray(buf, 0, shape, c_strides(shape), src.dtype), ev

    def upload(self, host: np.ndarray) -> tuple[CLArray, cl.Event | None]:
        shape, dtype, n = tuple(host.shape), host.dtype, host.nbytes
        if n == 0:
            return CLArray(None, 0, shape, c_strides(shape), dtype), None
        buf = self._device_buffer(n)
        s = self.pool.take(n)
        if s.buf is not None:
            src = s.view(shape, dtype)
            np.copyto(src, host)  # pageable (or memory-mapped file) -> staging, on this thread
        else:
            src = np.ascontiguousarray(host)
        return self._copy(buf, s, src)

    def stage(self, shape: tuple[int, ...], dtype: np.dtype) -> Slot | None:
        """A host-mapped buffer for one batch (None: the driver refused one; read into a new array)."""
        return self.pool.lend(shape, dtype)

    def upload_staged(self, s: Slot) -> tuple[CLArray, cl.Event]:
        host = s.host
        assert host is not None
        try:
            buf = self._device_buffer(host.nbytes)
        except BaseException:
            self.pool.give_back(s)
            raise
        return self._copy(buf, s, host)

    def give_back(self, s: Slot) -> None:
        self.pool.give_back(s)

    def ready(self, event: cl.Event) -> None:
        # Kernels enqueued on the compute queue after this run after the copy; the host goes on.
        cl.enqueue_barrier(self.dev.queue, wait_for=[event])

    def close(self) -> None:
        self.queue.finish()
        self.pool.close()
        self.queue.finish()
