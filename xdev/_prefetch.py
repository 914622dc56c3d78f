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

The staging protocol a Device may offer (``Device.stager(slots)`` returns None or an
object with these methods; all but ``ready`` are called from the background thread):

    upload(host: np.ndarray) -> (native device array, token)
    ready(token) -> None      # consumer thread: order later device work after the copy
    close() -> None           # free staging buffers; the pipeline has stopped
"""
from __future__ import annotations

import queue
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from ._array import Array
from ._ops import _device_for
from .contract import FLOAT_DTYPES, Device

_DONE = object()


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


class _State:
    """Everything the background thread touches; the Prefetch object is not among it, so
    dropping the last reference to the Prefetch (break, GC) can stop the thread."""

    def __init__(self, source: Iterable[Any], depth: int, dev: Device, stager: Any) -> None:
        self.source = source
        self.dev = dev
        self.stager = stager
        self.slots = threading.Semaphore(depth)  # batches fetched but not yet taken by the consumer
        self.out: queue.Queue[Any] = queue.Queue()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.closed = False
        self.lock = threading.Lock()

    # -- background thread ------------------------------------------------------------------
    def run(self) -> None:
        it = None
        try:
            it = iter(self.source)
            while True:
                self.slots.acquire()  # no polling: shutdown() releases a slot to wake this up
                if self.stop.is_set():
                    return
                try:
                    host = next(it)
                except StopIteration:
                    self.out.put(_DONE)
                    return
                self.out.put(self._upload(host))
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer, raised there with its traceback
            self.out.put(_Failure(e))
        finally:
            close = getattr(it, "close", None)  # a generator source: run its finally blocks here
            if close is not None:
                try:
                    close()
                except Exception:
                    pass

    def _upload(self, host: Any) -> tuple[Any, list[Any]]:
        tokens: list[Any] = []

        def put(leaf: Any) -> Any:
            if isinstance(leaf, np.ndarray) and leaf.dtype in FLOAT_DTYPES:
                self.dev.check_dtype(leaf.dtype)
                data, token = self.stager.upload(leaf)
                if token is not None:
                    tokens.append(token)
                return Array._wrap(data, self.dev)
            return leaf

        return _map(host, put), tokens

    # -- shutdown (any thread) ---------------------------------------------------------------
    def shutdown(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        self.stop.set()
        self.slots.release()  # wake a producer waiting for a slot; it sees `stop` and returns
        t = self.thread
        if t is not None and t is not threading.current_thread():
            t.join()
        # Drop the batches uploaded ahead (their device memory goes back to the pool), then
        # the staging buffers: nothing uses them once the thread has ended.
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break
        if t is None or not t.is_alive():
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
        """Stop the background thread, drop the batches uploaded ahead, free staging buffers."""
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

    - At most ``depth`` batches are drawn and uploaded ahead of the one the caller holds,
      so host and device memory stay bounded.
    - An exception raised by ``batches`` (or by an upload) is raised by ``next()`` in the
      caller, with the producer's traceback.
    - ``break``, ``close()``, leaving a ``with`` block, or dropping the iterator stops the
      thread (after the source's current ``next()`` returns), closes a generator source,
      and frees the batches uploaded ahead and the staging buffers.

    The device is resolved like any other call (``backend=``, ``use_backend``,
    ``set_backend``, ``XDEV_BACKEND``). On CUDA the batch is ordered before later work on
    the stream that is current when ``next()`` returns it. See docs/pipeline.md.
    """
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"prefetch depth must be an integer >= 1 (batches uploaded ahead); received {depth!r}")
    if isinstance(batches, (np.ndarray, Array)):
        raise TypeError(
            "prefetch takes an iterable of batches (e.g. a list or generator of arrays), not one "
            "array; to iterate over the first axis, pass iter(array) or np.array_split(array, n)"
        )
    if not isinstance(batches, Iterable):
        raise TypeError(f"prefetch takes an iterable of batches; received {type(batches).__name__}")
    dev, _ = _device_for(backend, ())
    stager = dev.stager(int(depth) + 1)
    state = _State(batches, int(depth), dev, stager if stager is not None else _Plain(dev))
    pf = Prefetch(state)
    t = threading.Thread(target=state.run, name=f"xdev.prefetch({dev.key})", daemon=True)
    state.thread = t
    t.start()
    return pf
