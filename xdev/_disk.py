"""The disk stage of an input pipeline: .npy batches read into RAM by worker threads.

``npy_batches`` reads each batch with ``readinto`` from a file descriptor on a worker
thread (the read releases the GIL), ``workers`` batches at a time, into a new array, or,
under :func:`xdev.prefetch`, straight into the device's reused staging buffer. Reading
through a descriptor instead of a memory map makes a file that shrinks while it is read an
error (a short read) instead of a SIGBUS, and a FIFO or device node is refused before
anything blocks on it. ``drop_page_cache`` evicts files from the OS page cache so a
benchmark can time a cold read; ``resident_fraction`` says how much of a file is cached.
"""
from __future__ import annotations

import ast
import mmap
import os
import stat
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

PathLike = str | os.PathLike

# np.load's own limit on a header's length: beyond it, parsing the header is a risk in itself.
MAX_HEADER_BYTES = 10000


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _open_regular(path: str) -> int:
    """A read-only descriptor of ``path``; ValueError if it is not a regular file.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. The
    type is checked on the open descriptor, so nothing can swap the file in between.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise e from None
        if stat.S_ISREG(mode):
            raise
        raise ValueError(f"{path!r} is {_kind(mode)}, not a regular file ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{path!r} is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Npy:
    """What a .npy header says: where the data starts, its dtype and shape."""

    __slots__ = ("path", "dtype", "shape", "fortran", "offset", "nbytes")

    def __init__(self, path: str, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, offset: int) -> None:
        self.path, self.dtype, self.shape, self.fortran, self.offset = path, dtype, shape, fortran, offset
        self.nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    @property
    def rows(self) -> int:
        return int(self.shape[0]) if self.shape else 1

    def part_shape(self, start: int, stop: int) -> tuple[int, ...]:
        return (stop - start, *self.shape[1:]) if self.shape else ()


def _parse_header(path: str, f: Any, size: int) -> _Npy:
    magic = f.read(8)
    if magic[:4] == b"PK\x03\x04":  # a zip file: what numpy.savez writes
        raise ValueError("it is a .npz archive, not a .npy array; save each array with numpy.save, or pass "
                         "numpy.load(...)[name] batches yourself")
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise ValueError(f"no .npy magic string at its start (found {magic[:6]!r})")
    major = magic[6]
    if major not in (1, 2, 3):
        raise ValueError(f".npy format version {major}.{magic[7]} is not one NumPy writes (1, 2 or 3)")
    width = 2 if major == 1 else 4
    raw = f.read(width)
    if len(raw) < width:
        raise ValueError("the file ends inside its header")
    hlen = int.from_bytes(raw, "little")
    if hlen > MAX_HEADER_BYTES:
        raise ValueError(f"its header claims {hlen} bytes, more than the {MAX_HEADER_BYTES} np.load reads")
    text = f.read(hlen)
    if len(text) < hlen:
        raise ValueError("the file ends inside its header")
    header = ast.literal_eval(text.decode("utf8" if major == 3 else "latin1"))
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        raise ValueError("its header is not a dict with keys 'descr', 'fortran_order' and 'shape'")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"its header's shape {shape!r} is not a tuple of sizes")
    if not isinstance(fortran, bool):
        raise ValueError(f"its header's fortran_order {fortran!r} is not a bool")
    dtype = np.lib.format.descr_to_dtype(header["descr"])
    if dtype.hasobject:
        raise ValueError(f"it holds Python objects (dtype {dtype}), stored pickled; npy_batches reads numeric "
                         f"arrays only")
    info = _Npy(path, dtype, shape, fortran, 8 + width + hlen)
    if size < info.offset + info.nbytes:
        raise ValueError(f"it holds {size - info.offset} bytes of data where its header ({dtype}, shape "
                         f"{shape}) needs {info.nbytes}: the file is truncated")
    return info


def _header(path: str) -> _Npy:
    try:
        fd = _open_regular(path)
    except ValueError as e:
        raise ValueError(f"npy_batches: {e}; it reads .npy files") from None
    except OSError as e:
        raise ValueError(f"npy_batches: cannot open {path!r}: {e.strerror or e}") from e
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size == 0:
            raise ValueError(f"npy_batches: {path!r} is empty (0 bytes), not a .npy array")
        try:
            return _parse_header(path, f, size)
        except Exception as e:  # whatever a corrupt header raises (ValueError, SyntaxError, ...)
            raise ValueError(f"npy_batches: {path!r} is not a readable .npy array: {e}") from e


def _read(info: _Npy, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows [start, stop) of the file, into ``out`` (C-contiguous, the file's item size) or a
    new array. A file that no longer holds them is a ValueError naming it."""
    shape = info.part_shape(start, stop)
    if out is None:
        if info.fortran and len(shape) > 1:
            out = np.empty(shape[::-1], info.dtype).T  # Fortran order: the reversed C array, transposed
        else:
            out = np.empty(shape, info.dtype)
    flat = out.T if (info.fortran and out.ndim > 1) else out
    dst = memoryview(flat.reshape(-1).view(np.uint8))
    n = len(dst)
    row_bytes = info.nbytes // info.rows if info.rows else 0
    pos = info.offset + start * row_bytes
    try:
        fd = _open_regular(info.path)
    except ValueError as e:
        raise ValueError(f"npy_batches: {e} now; it was a .npy file when npy_batches read its header") from None
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        got = 0
        if size >= pos + n:
            f.seek(pos)
            while got < n:
                k = f.readinto(dst[got:])  # the disk read; releases the GIL
                if not k:
                    break
                got += k
        if got < n:
            raise ValueError(
                f"npy_batches: {info.path!r} was truncated while being read: rows {start}:{stop} need bytes "
                f"{pos}..{pos + n} and the file now holds {os.fstat(fd).st_size}; rewrite a file only "
                f"after the epoch reading it has finished")
    return out


class Staged:
    """A batch that a reader thread read into a staging slot (see xdev.prefetch)."""

    __slots__ = ("slot",)

    def __init__(self, slot: Any) -> None:
        self.slot = slot


class NpyBatches:
    """Iterable of in-RAM batches from ``.npy`` files (see :func:`npy_batches`)."""

    def __init__(self, paths: Sequence[PathLike], batch_size: int | None, workers: int) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.batch_size = batch_size
        self.workers = workers
        # Called after each read with (batch index, t0, t1) from perf_counter; the benchmark
        # sets it to draw its timeline.
        self._on_read: Callable[[int, float, float], None] | None = None
        # (header, start, stop) per batch; headers are read now, so a bad file fails here.
        self._parts: list[tuple[_Npy, int, int]] = []
        for p in self.paths:
            info = _header(p)
            n = info.rows
            if batch_size is None or not info.shape:
                self._parts.append((info, 0, n))
            elif info.fortran and len(info.shape) > 1:
                raise ValueError(f"npy_batches: {p!r} is stored in Fortran order, where the rows of a batch "
                                 f"are not contiguous; re-save it in C order "
                                 f"(numpy.save(path, numpy.ascontiguousarray(a))) or drop batch_size")
            else:
                self._parts.extend((info, i, min(i + batch_size, n)) for i in range(0, n, batch_size))

    def __len__(self) -> int:
        return len(self._parts)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._batches(None)

    def _job(self, index: int, part: tuple[_Npy, int, int], staging: Any) -> Any:
        info, start, stop = part
        slot = None
        if staging is not None and not (info.fortran and len(info.shape) > 1) and info.dtype.kind == "f":
            slot = staging.stage(info.part_shape(start, stop), info.dtype.newbyteorder("="))
        t0 = time.perf_counter()
        try:
            if slot is None:
                out = _read(info, start, stop)
            else:
                _read(info, start, stop, slot.host)
                if not info.dtype.isnative:
                    slot.host.byteswap(inplace=True)  # the file's bytes, now in native order
                out = Staged(slot)
        except BaseException:
            if slot is not None:
                staging.give_back(slot)
            raise
        if self._on_read is not None:
            self._on_read(index, t0, time.perf_counter())
        return out

    def _batches(self, staging: Any) -> Iterator[Any]:
        """The batches in order: arrays, or with ``staging`` (an object with ``stage(shape,
        dtype) -> slot | None`` and ``give_back(slot)``) Staged slots where it lent one."""
        from concurrent.futures import ThreadPoolExecutor  # imported on first use: keeps `import xdev` light

        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xdev.npy_batches")
        pending: deque[Any] = deque()  # futures, in batch order
        parts = enumerate(self._parts)
        try:
            # Keep `workers` reads in flight: one finished batch waits in RAM per worker at most.
            for i, part in parts:
                pending.append(pool.submit(self._job, i, part, staging))
                if len(pending) >= self.workers:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(parts, None)
                if nxt is not None:
                    pending.append(pool.submit(self._job, *nxt, staging))
                yield batch
        finally:
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True)  # no reader thread outlives the iteration
            for f in pending:  # slots read into but never handed out go back
                if f.done() and not f.cancelled() and f.exception() is None and isinstance(f.result(), Staged):
                    staging.give_back(f.result().slot)

    def __repr__(self) -> str:
        return f"<xdev.npy_batches: {len(self)} batches from {len(self.paths)} files, {self.workers} workers>"


def npy_batches(paths: Sequence[PathLike], *, batch_size: int | None = None, workers: int = 2) -> NpyBatches:
    """Batches read from ``.npy`` files into RAM by ``workers`` background threads, in order.

    Each file is one batch, or with ``batch_size`` is split along its first axis into
    batches of that many rows (the last may be shorter; the file must be in C order). Each
    batch is read with ``readinto`` into a new array on a worker thread, so the disk read
    overlaps with whatever the caller does; at most ``workers`` batches are read ahead.
    Iterate it again for another epoch. Headers are read here: a missing, empty, corrupt
    or truncated file, or one that is not a regular file (a FIFO, a directory), is a
    ValueError naming it. A file truncated later, while an epoch reads it, is a ValueError
    from that epoch. Combine with :func:`xdev.prefetch` to overlap the upload too (the
    readers then read straight into its staging buffers)::

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
    file, so check with :func:`resident_fraction`. A path that is not a regular file (a
    directory, a FIFO) is a reason returned, not an exception.
    """
    if not hasattr(os, "posix_fadvise"):
        return f"os.posix_fadvise is not available on this platform ({os.name}); reads are not cold"
    for p in paths:
        try:
            fd = _open_regular(os.fspath(p))
        except ValueError as e:
            return f"cannot drop {e} from the page cache; pass the batch files"
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
    """Fraction of a file's pages in the page cache (Linux mincore), or None if unknown
    (including for anything but a regular file)."""
    import ctypes
    import ctypes.util

    try:
        fd = _open_regular(os.fspath(path))
    except (OSError, ValueError):
        return None
    try:
        size = os.fstat(fd).st_size
        libc_name = ctypes.util.find_library("c")
        if not libc_name or size == 0 or not hasattr(mmap, "PROT_READ"):
            return None
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        npages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        # Python's mmap hides its address; mapping does not read the file, mincore only looks.
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
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
