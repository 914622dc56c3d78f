"""xdev.prefetch: upload the next batches on a background thread while the device computes.

The lecture's fourth claim: data travels disk -> RAM -> device, and a training step that
waits for each leg costs their sum. ``prefetch`` runs the legs that do not need the
consumer in a background thread, ``depth`` batches ahead, so a step costs about the
slowest leg instead (tf.data's ``prefetch``, torch's DataLoader with ``pin_memory`` and
``non_blocking`` copies).

How each backend uploads (the device's ``stager``; see backends/*/staging.py):

- cuda: the batch is copied into one of a few reused pinned (page-locked) host buffers,
  then copied to the device on a dedicated copy stream; the consumer's stream waits on an
  event recorded after the copy, so neither thread blocks the GPU and the host never waits.
- opencl: a second command queue carries the copies, from host-mapped
  (``CL_MEM_ALLOC_HOST_PTR``) staging buffers where the driver allocates them; the compute
  queue waits on the copy's event with a barrier.
- numpy: the upload is a copy into a fresh array; only the producer runs ahead.

With an :func:`xdev.npy_batches` source, the reader threads read each batch from disk
straight into a staging buffer (the stager's ``stage``), so the upload is one copy from
pinned memory with no CPU copy before it (on numpy: the batch read is the array handed out).

The staging protocol a Device may offer (``Device.stager(slots)`` returns None or an
object with these methods; ``ready`` runs in the consumer's thread, ``stage`` and
``give_back`` in npy_batches' reader threads or the background thread, the rest in the
background thread):

    upload(host: np.ndarray) -> (native device array, token)
    stage(shape, dtype) -> slot | None   # a reused host buffer, slot.host (C-contiguous), to fill
    upload_staged(slot) -> (native device array, token)   # the filled slot to the device
    give_back(slot) -> None   # a slot that will not be uploaded
    ready(token) -> None      # order later device work after the copy
    close() -> None           # free staging buffers; the pipeline has stopped

``stage``, ``upload_staged`` and ``give_back`` are optional (without them, npy_batches'
readers read into new arrays). A stager keeps at most ``slots`` buffers, allocated on first
use (xdev.contract.staging).
"""
from __future__ import annotations

import os
import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ._array import Array
from ._disk import NpyBatches, Staged
from ._ops import _device_for
from .contract import FLOAT_DTYPES, Device

_DONE = object()

# Batches uploaded ahead hold device memory each; beyond this, a depth is a mistake (it
# would not hide a longer stall than a few thousand steps do).
MAX_DEPTH = 4096
# Staging buffers for a source other than npy_batches: copies that may be in flight at once
# (a buffer is reused once its copy has finished, whatever the depth).
STAGING_SLOTS = 3
# How long close() waits for the background thread to end once it is not inside the source.
CLOSE_JOIN_S = 1.0


class _Plain:
    """The stager of a device that offers none: a synchronous upload in the background thread."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev

    def upload(self, host: np.ndarray) -> tuple[Any, Any]:
        return self.dev.upload(host), None

    def ready(self, token: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _native(leaf: np.ndarray) -> np.ndarray:
    """A float leaf in the machine's byte order (a big-endian .npy file loads as '>f4')."""
    if leaf.dtype.kind == "f" and not leaf.dtype.isnative and leaf.dtype.newbyteorder("=") in FLOAT_DTYPES:
        return leaf.astype(leaf.dtype.newbyteorder("="))
    return leaf


class _Staging:
    """What npy_batches' readers see of the stager: a buffer to read a batch into, or None
    (then they read into a new array and the batch takes the ordinary upload)."""

    def __init__(self, dev: Device, stager: Any) -> None:
        self.dev, self.stager = dev, stager

    def stage(self, shape: tuple[int, ...], dtype: np.dtype) -> Any | None:
        if dtype not in FLOAT_DTYPES or not hasattr(self.stager, "stage"):
            return None  # passed through, refused by the upload with the usual message, or no staging
        try:
            self.dev.check_dtype(dtype)
        except TypeError:
            return None
        return self.stager.stage(shape, dtype)

    def give_back(self, slot: Any) -> None:
        self.stager.give_back(slot)


class _State:
    """Everything the background thread touches; the Prefetch object is not among it, so
    dropping the last reference to the Prefetch (break, GC) can stop the thread.

    Shutdown never waits for the source: ``closed`` is set under ``mu``, and the producer
    checks it under ``mu`` before each use of the stager, so a producer still blocked in the
    source's ``next()`` drops whatever that call returns and ends without touching a staging
    buffer. The stager is closed by whichever side is last to use it: shutdown, unless an
    upload is in progress at that moment, in which case the producer, once it has finished.
    """

    def __init__(self, source: Iterable[Any], depth: int, dev: Device, stager: Any) -> None:
        self.source = source
        self.dev = dev
        self.stager = stager
        self.slots = threading.Semaphore(depth)  # batches fetched but not yet taken by the consumer
        self.out: queue.Queue[Any] = queue.Queue()
        self.thread: threading.Thread | None = None
        # A reentrant lock: a garbage collection in the producer thread may run shutdown()
        # (the Prefetch's finalizer) while that thread holds the lock.
        self.mu = threading.RLock()
        self.closed = False
        self.in_source = False  # the producer is inside the source (next() or close()): may block forever
        self.busy = False  # the producer is using the stager
        self.stager_closed = False
        self.pid = os.getpid()  # a fork() child has the state but not the thread or the driver

    def forked(self) -> bool:
        return os.getpid() != self.pid

    # -- background thread ------------------------------------------------------------------
    def run(self) -> None:
        it: Iterator[Any] | None = None
        try:
            it = self._iterate()
            while True:
                self.slots.acquire()  # no polling: shutdown() releases a slot to wake this up
                with self.mu:
                    if self.closed:
                        return
                    self.in_source = True
                try:
                    host = next(it, _DONE)
                finally:
                    with self.mu:
                        self.in_source = False
                        closed = self.closed
                        self.busy = not closed
                if closed:
                    self._discard(host)
                    return
                if host is _DONE:
                    self.out.put(_DONE)
                    return
                try:
                    item = self._upload(host)
                finally:
                    with self.mu:
                        self.busy = False
                        closed = self.closed
                if closed:
                    return  # shutdown has emptied the queue already: the batch is dropped here
                self.out.put(item)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there with its traceback
            with self.mu:
                self.busy = False
                closed = self.closed
            if not closed:  # after close() nobody reads the queue (a StagingClosed is expected then)
                self.out.put(_Failure(e))
        finally:
            close = getattr(it, "close", None)  # a generator source: run its finally blocks here
            if close is not None:
                with self.mu:
                    self.in_source = True  # a generator's cleanup may block too
                try:
                    close()
                except Exception:
                    pass
                with self.mu:
                    self.in_source = False
            with self.mu:
                mine = self.closed and not self.stager_closed
                self.stager_closed = self.stager_closed or mine
            if mine:
                self.stager.close()

    def _iterate(self) -> Iterator[Any]:
        if isinstance(self.source, NpyBatches):
            # Reader threads read straight into staging buffers.
            return self.source._batches(_Staging(self.dev, self.stager))
        return iter(self.source)

    def _discard(self, host: Any) -> None:
        """A batch that arrived after close(): its staging slot goes back (the closed pool
        drops it), nothing is uploaded."""
        if isinstance(host, Staged):
            self.stager.give_back(host.slot)

    def _upload(self, host: Any) -> tuple[Any, list[Any]]:
        if isinstance(host, Staged):
            data, token = self.stager.upload_staged(host.slot)
            return Array._wrap(data, self.dev), ([] if token is None else [token])
        tokens: list[Any] = []

        def put(leaf: Any) -> Any:
            if isinstance(leaf, np.ndarray):
                leaf = _native(leaf)
                if leaf.dtype in FLOAT_DTYPES:
                    self.dev.check_dtype(leaf.dtype)
                    data, token = self.stager.upload(leaf)
                    if token is not None:
                        tokens.append(token)
                    return Array._wrap(data, self.dev)
            return leaf

        return _map(host, put), tokens

    # -- shutdown (any thread) ---------------------------------------------------------------
    def shutdown(self) -> None:
        if self.forked():
            # The thread, the queued batches and the staging buffers are the parent's: touching
            # them here would free the parent's memory twice, or block in the driver (fork.py).
            self.closed = True
            return
        with self.mu:
            if self.closed:
                return
            self.closed = True
            stuck = self.in_source
            mine = not self.busy and not self.stager_closed
            self.stager_closed = self.stager_closed or mine
        self.slots.release()  # wake a producer waiting for a slot; it sees `closed` and returns
        t = self.thread
        if t is not None and t is not threading.current_thread() and not stuck:
            # Bounded: the producer wakes from the semaphore or finishes one upload. Not
            # unbounded even then: a generator's finally block may itself block.
            t.join(CLOSE_JOIN_S)
        # Drop the batches uploaded ahead (their device memory goes back to the pool), then
        # the staging buffers, unless the producer is still uploading: it closes them then.
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break
        self.out.put(_DONE)  # a consumer blocked in next() in another thread stops
        if mine:
            self.stager.close()


class _Failure:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _map(obj: Any, fn: Any) -> Any:
    """Apply fn to the leaves of nested tuples, lists and dicts (namedtuples keep their type)."""
    if isinstance(obj, Mapping):
        return type(obj)((k, _map(v, fn)) for k, v in obj.items()) if type(obj) is not dict else {
            k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, tuple):
        items = [_map(v, fn) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_map(v, fn) for v in obj]
    return fn(obj)


class Prefetch(Iterator[Any]):
    """The iterator :func:`prefetch` returns: also a context manager; ``close()`` stops it."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self._finalizer = weakref.finalize(self, _State.shutdown, state)
        # Not at interpreter exit: the producer is a daemon thread, and joining it there
        # would hang the exit on a source that blocks (a queue, a socket, a stalled disk).
        self._finalizer.atexit = False

    @property
    def device(self) -> str:
        """The device the batches are uploaded to."""
        return self._state.dev.key

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self) -> Any:
        st = self._state
        if st.forked():
            raise RuntimeError(
                f"this xdev.prefetch iterator was created in process {st.pid} and does not survive "
                f"fork(): its background thread runs only in the process that created it (this is "
                f"process {os.getpid()}); create the prefetch iterator in the child process instead")
        if st.closed:
            raise StopIteration
        item = st.out.get()
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            # The exception object keeps the producer's frames in its __traceback__.
            raise item.exc
        st.slots.release()
        batch, tokens = item
        for t in tokens:
            st.stager.ready(t)
        return batch

    def close(self) -> None:
        """Stop the background thread, drop the batches uploaded ahead, free staging buffers.

        Returns promptly even when the source's ``next()`` blocks: the background thread is
        then left to finish that call on its own (a daemon thread), drops what it returns
        and ends, touching no staging buffer.
        """
        self._finalizer()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def prefetch(batches: Iterable[Any], depth: int = 2, backend: str | None = None) -> Prefetch:
    """Iterate over ``batches`` uploaded to a device, up to ``depth`` batches ahead.

    ``batches`` yields NumPy arrays, or tuples, lists or dicts of them (e.g. ``(x, y)``);
    each float16/32/64 ``ndarray`` leaf becomes an :class:`xdev.Array` on the device and
    every other leaf (integer labels, strings, ...) is passed through unchanged. A
    background thread draws from ``batches`` and uploads while the caller computes on
    the previous batch; batches arrive in order.

    - At most ``depth`` batches (1 to ``MAX_DEPTH`` = 4096) are drawn and uploaded ahead of
      the one the caller holds, so host and device memory stay bounded; staging buffers
      are allocated as they are first needed, a few of them whatever the depth.
    - An exception raised by ``batches`` (or by an upload) is raised by ``next()`` in the
      caller, with the producer's traceback.
    - ``break``, ``close()``, leaving a ``with`` block, or dropping the iterator stops the
      thread, closes a generator source, and frees the batches uploaded ahead and the
      staging buffers. It returns promptly even when the source's ``next()`` blocks (a
      queue, a socket, a stalled disk): the background thread, a daemon, is then left
      inside that call; when it returns, the thread drops the batch, closes the source and
      ends, and it never touches a freed buffer.
    - Float leaves in a non-native byte order (a big-endian ``.npy`` file) are converted
      to native order.

    With an :func:`xdev.npy_batches` source, its reader threads read each batch straight
    into a reused staging buffer (pinned memory on CUDA, host-mapped on OpenCL), from which
    the upload is one asynchronous copy.

    The device is resolved like any other call (``backend=``, ``use_backend``,
    ``set_backend``, ``XDEV_BACKEND``). On CUDA the batch is ordered before later work on
    the stream that is current when ``next()`` returns it. See docs/pipeline.md.
    """
    if (isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1
            or depth > MAX_DEPTH):
        raise ValueError(
            f"prefetch depth must be an integer from 1 to {MAX_DEPTH} (batches uploaded ahead, each "
            f"holding device memory); received {depth!r}"
        )
    if isinstance(batches, (np.ndarray, Array)):
        raise TypeError(
            "prefetch takes an iterable of batches (e.g. a list or generator of arrays), not one "
            "array; to iterate over the first axis, pass iter(array) or np.array_split(array, n)"
        )
    if not isinstance(batches, Iterable):
        raise TypeError(f"prefetch takes an iterable of batches; received {type(batches).__name__}")
    dev, _ = _device_for(backend, ())
    # Readers hold a buffer each while they read, one more is being uploaded, one more lets a
    # copy run while every reader reads: with fewer, a reader would wait for a copy.
    slots = batches.workers + 2 if isinstance(batches, NpyBatches) else min(int(depth) + 1, STAGING_SLOTS)
    stager = dev.stager(slots)
    state = _State(batches, int(depth), dev, stager if stager is not None else _Plain(dev))
    pf = Prefetch(state)
    t = threading.Thread(target=state.run, name=f"xdev.prefetch({dev.key})", daemon=True)
    state.thread = t
    t.start()
    return pf
