"""Reusable host staging buffers for xdev.prefetch's uploads (pinned on CUDA, host-mapped on OpenCL).

A :class:`SlotPool` lends host buffers to whoever fills them: the prefetch thread (a batch
copied in from pageable memory) or ``npy_batches``' reader threads (a batch read from disk
straight into the buffer). The backend then copies a filled buffer to the device
asynchronously and hands the copy's event back with :meth:`SlotPool.copying`; the buffer is
lent again only after that event has completed.

- Buffers are allocated on first use, at most ``count`` of them, so a large prefetch depth
  costs nothing up front.
- :meth:`take` waits (in the calling thread, never the consumer's) for the oldest pending
  copy when every buffer is in use, and raises :class:`StagingClosed` once the pool is closed.
- :meth:`close` frees the buffers nobody holds. A buffer lent out at that moment stays valid
  for its holder (who may still be writing into it) and is dropped when given back.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

import numpy as np


class StagingClosed(RuntimeError):
    """The pipeline that owns the staging buffers has stopped."""


class Slot:
    """One staging buffer and the state of its last use."""

    __slots__ = ("buf", "event", "keep", "host")

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None  # uint8 host memory from the backend's allocator, or None
        self.event: Any = None  # the last copy out of the buffer (None: nothing pending)
        self.keep: Any = None  # what that copy reads, kept alive until it has finished
        self.host: np.ndarray | None = None  # the view of `buf` the current batch is written to

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The first bytes of the buffer as a C-contiguous array of ``shape`` and ``dtype``."""
        assert self.buf is not None
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        self.host = self.buf[:n].view(dtype).reshape(shape)
        return self.host


class SlotPool:
    """At most ``count`` staging buffers, allocated lazily and lent to one holder at a time.

    ``alloc(nbytes)`` returns a uint8 host array (or None when the memory is refused: the
    slot then has no buffer and the backend copies from pageable memory); ``wait(event)``
    blocks until a copy has finished; ``free(buf)`` releases a buffer explicitly (optional:
    dropping the last reference frees it too).
    """

    def __init__(self, count: int, alloc: Callable[[int], np.ndarray | None], wait: Callable[[Any], None],
                 free: Callable[[np.ndarray], None] | None = None) -> None:
        self.count = max(1, int(count))
        self._alloc, self._wait, self._free = alloc, wait, free
        self._cv = threading.Condition()
        self._idle: list[Slot] = []  # allocated (or not yet), no copy pending
        self._busy: deque[Slot] = deque()  # a copy may be pending, oldest first
        self._made = 0
        self.closed = False
        self.alloc_error: str | None = None  # why a buffer was refused, if one was

    @property
    def allocated(self) -> int:
        """Slots created so far (each holds at most one buffer)."""
        return self._made

    def take(self, nbytes: int) -> Slot:
        """A slot whose buffer holds at least ``nbytes`` (``buf`` None if the allocator refused)."""
        with self._cv:
            while True:
                if self.closed:
                    raise StagingClosed("the prefetch pipeline was closed; its staging buffers are gone")
                if self._idle:
                    # The smallest idle buffer that fits, else the largest (grown below).
                    fits = [s for s in self._idle if s.buf is not None and s.buf.nbytes >= nbytes]
                    s = min(fits, key=lambda x: x.buf.nbytes) if fits else max(
                        self._idle, key=lambda x: -1 if x.buf is None else x.buf.nbytes)
                    self._idle.remove(s)
                    break
                if self._made < self.count:
                    self._made += 1
                    s = Slot()
                    break
                if self._busy:
                    s = self._busy.popleft()
                    break
                self._cv.wait()  # every slot is lent out: one comes back with give_back/copying
        try:
            if s.event is not None:
                self._wait(s.event)  # this (background) thread waits for the copy, nobody else
            s.event = s.keep = None
            if s.buf is None or s.buf.nbytes < nbytes:
                old, s.buf = s.buf, None  # let the old buffer go before asking for a larger one
                if old is not None and self._free is not None:
                    self._free(old)
                del old
                try:
                    s.buf = self._alloc(nbytes)
                except Exception as e:  # page-locked memory is a limited OS resource
                    self.alloc_error = f"{type(e).__name__}: {e}"
                    s.buf = None
                if s.buf is None and self.alloc_error is None:
                    self.alloc_error = "the driver refused a host staging buffer"
        except BaseException:
            self.give_back(s)
            raise
        return s

    def lend(self, shape: tuple[int, ...], dtype: np.dtype) -> Slot | None:
        """A slot whose ``host`` is a staging buffer of ``shape`` and ``dtype`` to fill (a
        reader's destination), or None when there is no buffer to give (empty, or refused)."""
        n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if n == 0:
            return None
        s = self.take(n)
        if s.buf is None:
            self.give_back(s)
            return None
        s.view(shape, dtype)
        return s

    def copying(self, s: Slot, event: Any, keep: Any = None) -> None:
        """``s``'s buffer is being copied out until ``event`` completes; lend it again after that."""
        s.event, s.keep = event, keep
        self._put_back(s, self._busy)

    def give_back(self, s: Slot) -> None:
        """Return a slot whose buffer was not (or is no longer) being copied."""
        self._put_back(s, self._idle)

    def _put_back(self, s: Slot, into: Any) -> None:
        with self._cv:
            s.host = None
            closed = self.closed
            if not closed:
                into.append(s)
                self._cv.notify()
        if closed:  # nobody lends it again: free it (once its copy, if any, has finished)
            self._drop(s, wait=True)

    def close(self) -> None:
        """Wait for pending copies and free every buffer not lent out; later take() raises."""
        with self._cv:
            if self.closed:
                return
            self.closed = True
            slots = list(self._busy) + self._idle
            self._busy.clear()
            self._idle.clear()
            self._cv.notify_all()
        for s in slots:
            self._drop(s, wait=True)

    def _drop(self, s: Slot, wait: bool) -> None:
        if wait and s.event is not None:
            try:
                self._wait(s.event)
            except Exception:
                pass  # a failed copy: its buffer goes all the same
        buf, s.buf, s.event, s.keep, s.host = s.buf, None, None, None, None
        if buf is not None and self._free is not None:
            self._free(buf)
