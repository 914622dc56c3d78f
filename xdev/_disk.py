"""The disk stage of an input pipeline: .npy batches read into RAM by worker threads.

``npy_batches`` memory-maps each file and copies it into a fresh in-RAM array on a worker
thread: the page faults of that copy are the disk reads, and they happen off the
caller's thread (NumPy releases the GIL for the copy), ``workers`` files at a time.
``drop_page_cache`` evicts files from the OS page cache so a benchmark can time a cold
read; ``resident_fraction`` says how much of a file is cached.
"""
from __future__ import annotations

import mmap
import os
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

PathLike = str | os.PathLike


class NpyBatches:
    """Iterable of in-RAM batches from ``.npy`` files (see :func:`npy_batches`)."""

    def __init__(self, paths: Sequence[PathLike], batch_size: int | None, workers: int) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.batch_size = batch_size
        self.workers = workers
        self._reader = _read  # (path, start, stop) -> array; the benchmark wraps it to time reads
        # (path, start, stop) per batch; headers are read now, so a bad file fails here.
        self._parts: list[tuple[str, int, int]] = []
        for p in self.paths:
            try:
                m = np.load(p, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise ValueError(f"npy_batches: cannot memory-map {p!r} as a .npy array ({e})") from e
            if not isinstance(m, np.ndarray):  # np.load opens a .npz archive as an NpzFile
                m.close()
                raise ValueError(f"npy_batches: {p!r} is a .npz archive, not a .npy array; save each "
                                 f"array with numpy.save, or pass numpy.load(...)[name] batches yourself")
            n = int(m.shape[0]) if m.ndim else 1
            if batch_size is None or m.ndim == 0:
                self._parts.append((p, 0, n))
            else:
                self._parts.extend((p, i, min(i + batch_size, n)) for i in range(0, n, batch_size))
            del m

    def __len__(self) -> int:
        return len(self._parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._read_all()

    def _read_all(self) -> Iterator[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor  # imported on first use: keeps `import xdev` light

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xdev.npy_batches")
        pending: deque[Any] = deque()  # futures, in batch order
        parts = iter(self._parts)
        try:
            # Keep `workers` reads in flight: one finished batch waits in RAM per worker at most.
            for part in parts:
                pending.append(pool.submit(self._reader, *part))
                if len(pending) >= self.workers:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(parts, None)
                if nxt is not None:
                    pending.append(pool.submit(self._reader, *nxt))
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)  # no reader thread outlives the iteration

    def __repr__(self) -> str:
        return f"<xdev.npy_batches: {len(self)} batches from {len(self.paths)} files, {self.workers} workers>"


def _read(path: str, start: int, stop: int) -> np.ndarray:
    m = np.load(path, mmap_mode="r")
    src = m[start:stop] if m.ndim else m
    out = np.empty(src.shape, src.dtype)
    np.copyto(out, src)  # the disk read: page faults on the map, GIL released
    del src, m
    return out


def npy_batches(paths: Sequence[PathLike], *, batch_size: int | None = None, workers: int = 2) -> NpyBatches:
    """Batches read from ``.npy`` files into RAM by ``workers`` background threads, in order.

    Each file is one batch, or with ``batch_size`` is split along its first axis into
    batches of that many rows (the last may be shorter). Files are memory-mapped, and each
    batch is copied out of the map into a new array on a worker thread, so the disk read
    overlaps with whatever the caller does; at most ``workers`` batches are read ahead.
    Iterate it again for another epoch. Combine with :func:`xdev.prefetch` to overlap the
    upload too::

        for x in xdev.prefetch(xdev.npy_batches(files), depth=2):
            y = xdev.conv2d(x, w, padding=1)
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]  # type: ignore[list-item]
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"npy_batches: workers must be an integer >= 1; received {workers!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(f"npy_batches: batch_size must be None or an integer >= 1; received {batch_size!r}")
    return NpyBatches(list(paths), batch_size, workers)


def drop_page_cache(paths: Sequence[PathLike]) -> str | None:
    """Evict files from the OS page cache (for a cold read); None if done, else why not.

    Uses ``fsync`` then ``posix_fadvise(POSIX_FADV_DONTNEED)``. That is advice: the kernel
    may keep pages another process has mapped or locked, and on tmpfs the pages are the
    file, so check with :func:`resident_fraction`.
    """
    if not hasattr(os, "posix_fadvise"):
        return f"os.posix_fadvise is not available on this platform ({os.name}); reads are not cold"
    for p in paths:
        try:
            fd = os.open(os.fspath(p), os.O_RDONLY)
        except OSError as e:
            return f"cannot open {os.fspath(p)!r} to drop it from the page cache: {e}"
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as e:
            return f"posix_fadvise(POSIX_FADV_DONTNEED) failed on {os.fspath(p)!r}: {e}; reads are not cold"
        finally:
            os.close(fd)
    left = [resident_fraction(p) for p in paths]
    known = [f for f in left if f is not None]
    if known and max(known) > 0.5:
        return (f"the OS kept {100 * max(known):.0f}% of a file cached after POSIX_FADV_DONTNEED "
                f"(tmpfs, or mapped elsewhere); reads are not cold")
    return None


def resident_fraction(path: PathLike) -> float | None:
    """Fraction of a file's pages in the page cache (Linux mincore), or None if unknown."""
    import ctypes
    import ctypes.util

    size = os.path.getsize(path)
    libc_name = ctypes.util.find_library("c")
    if not libc_name or size == 0 or not hasattr(mmap, "PROT_READ"):
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    npages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    with open(path, "rb") as f:
        # Python's mmap hides its address; mapping does not read the file, mincore only looks.
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        return None
    try:
        vec = (ctypes.c_ubyte * npages)()
        if libc.mincore(addr, size, vec) != 0:
            return None
        # bit 0 of each byte: the page is resident (the other bits are reserved)
        return int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1)) / npages
    finally:
        libc.munmap(addr, size)
