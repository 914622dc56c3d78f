"""xdev.Array: a device array of one backend, with explicit transfers."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ._registry import get_device
from .contract import Device


class Array:
    """An n-d array (float, integer or bool) that lives on one device of one backend.

    Create with :func:`xdev.asarray` or as the result of an xdev operation. Data moves
    only when asked: ``numpy()`` / ``np.asarray(a)`` download, ``to(...)`` moves.
    """

    __slots__ = ("_data", "_dev", "algorithm", "__weakref__")

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        """NumPy must not turn `ndarray @ Array` into a silent download: np.matmul (and so
        the @ operator with an ndarray on the left) runs xdev.matmul; anything else is refused."""
        if ufunc is np.matmul and method == "__call__" and not kwargs and len(inputs) == 2:
            a, b = inputs  # @ is xdev.matmul (bound in _ops); one of them is self
            return a.__matmul__(b) if isinstance(a, Array) else b.__rmatmul__(a)
        name = getattr(ufunc, "__name__", str(ufunc))
        extra = f" with {', '.join(kwargs)}=" if kwargs else ""
        raise TypeError(
            f"NumPy's {name}{'.' + method if method != '__call__' else ''}{extra} cannot run on "
            f"an xdev.Array (device {self.device}); xdev computes matmul (xdev.matmul, @) and "
            f"conv2d on the device; for other NumPy operations download first with .numpy()"
        )

    _data: Any
    _dev: Device
    algorithm: str | None  # conv2d results: the algorithm that ran

    # The @ operator is xdev.matmul. xdev._ops, which defines matmul and builds Arrays, binds
    # these two when it is imported, so this module does not import _ops (no import cycle).
    __matmul__: Callable[[Array, Any], Array]
    __rmatmul__: Callable[[Array, Any], Array]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("create an xdev.Array with xdev.asarray(data, dtype=None, backend=None)")

    @classmethod
    def _wrap(cls, data: Any, dev: Device, algorithm: str | None = None) -> Array:
        self = object.__new__(cls)
        self._data = data
        self._dev = dev
        self.algorithm = algorithm
        return self

    # -- metadata -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._data.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._data.dtype)

    @property
    def ndim(self) -> int:
        return len(self._data.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._data.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    @property
    def backend(self) -> str:
        """Backend name: ``"numpy"``, ``"cuda"`` or ``"opencl"``."""
        return self._dev.backend

    @property
    def device(self) -> str:
        """Canonical device selector, usable with ``to()`` and ``backend=``."""
        return self._dev.key

    @property
    def data(self) -> Any:
        """The backend's native array (numpy.ndarray, cupy.ndarray, or an OpenCL buffer view)."""
        return self._data

    def __len__(self) -> int:
        if not self._data.shape:
            raise TypeError("len() of a 0-d xdev.Array")
        return int(self._data.shape[0])

    # -- transfers ------------------------------------------------------------------
    def numpy(self, out: np.ndarray | None = None) -> np.ndarray:
        """Download to a new NumPy array, or into ``out`` (same shape and dtype, writable;
        e.g. page-locked memory from a pinned buffer, the fastest download) and return it."""
        if out is None:
            return self._dev.download(self._data)
        if not isinstance(out, np.ndarray) or out.shape != self.shape or out.dtype != self.dtype:
            got = (f"{type(out).__name__} of shape {out.shape} and dtype {out.dtype}"
                   if isinstance(out, np.ndarray) else type(out).__name__)
            raise ValueError(f"numpy(out=...) needs a NumPy array of shape {self.shape} and dtype "
                             f"{self.dtype}; received {got}")
        if not out.flags.writeable:
            raise ValueError("numpy(out=...) needs a writable array; received a read-only one")
        self._dev.download_into(self._data, out)
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError(
                "an xdev.Array cannot be viewed as a NumPy array without a copy; "
                "use np.asarray(a) or a.numpy()"
            )
        host = self.numpy()
        return host if dtype is None else host.astype(dtype, copy=False)

    def to(self, backend: str) -> Array:
        """Move to another backend or device (``"numpy"``, ``"cuda:1"``, ...); explicit copy."""
        dev = get_device(backend)
        if dev is self._dev:
            return self
        dev.check_dtype(self.dtype)
        return Array._wrap(dev.upload(self.numpy()), dev)

    # -- DLPack and the CUDA array interface (zero-copy; docs/interop.md) -------------------
    def __dlpack__(self, stream: Any = None, *, max_version: tuple[int, int] | None = None,
                   dl_device: Any = None, copy: bool | None = None) -> Any:
        """Export as a DLPack capsule sharing this array's memory (numpy and cuda backends).

        ``dl_device=(1, 0)`` (the CPU) for an array elsewhere exports a host copy, and only
        with ``copy=True``: nothing moves silently. A view with negative strides and a
        read-only array are exported as a copy (a BufferError with ``copy=False``): torch
        aborts on the first and writes into the second.
        """
        if dl_device is not None and (int(dl_device[0]), int(dl_device[1])) != _dlpack_device_or_none(self._dev):
            if int(dl_device[0]) != 1:  # kDLCPU
                raise BufferError(f"__dlpack__: this xdev.Array lives on {self.device}; it can be exported to "
                                  f"its own device or, as a copy, to the CPU, not to DLPack device {tuple(dl_device)}")
            if copy is not True:
                raise BufferError(f"__dlpack__: this xdev.Array lives on {self.device}; handing it to the CPU needs "
                                  f"a copy, which DLPack makes only with copy=True (received copy={copy!r}); or "
                                  f"download it with a.numpy()")
            return get_device("numpy").to_dlpack(self.numpy(), stream=None, max_version=max_version, copy=False)
        hazard = _export_hazard(self._data) if _dlpack_device_or_none(self._dev) else None
        if hazard is not None and copy is not True:
            if copy is False:
                raise BufferError(
                    f"__dlpack__(copy=False): this xdev.Array has {hazard}, which DLPack consumers cannot "
                    f"all take safely (torch aborts the process on negative strides and writes into "
                    f"read-only memory); xdev exports such an array only as a copy: pass copy=None or "
                    f"copy=True, or export copy.copy(a)")
            copy = True  # DLPack's copy=None: a copy where sharing is not possible safely
        return self._dev.to_dlpack(self._data, stream=stream, max_version=max_version, copy=copy)

    def __dlpack_device__(self) -> tuple[int, int]:
        """(DLPack device type, device id): (1, 0) for numpy, (2, N) for cuda:N."""
        return self._dev.dlpack_device()

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        """CUDA arrays only (numba, CuPy, torch read it); AttributeError on other backends."""
        return self._dev.cuda_array_interface(self._data)

    # -- views ----------------------------------------------------------------------
    @property
    def T(self) -> Array:
        """All axes reversed (NumPy's ``.T``); a view, no copy."""
        return Array._wrap(self._dev.transpose(self._data, tuple(range(self.ndim))[::-1]), self._dev)

    @property
    def mT(self) -> Array:
        """The last two axes swapped (a stack of transposed matrices); a view, no copy."""
        n = self.ndim
        if n < 2:
            raise ValueError(f"mT needs at least 2 dimensions; this array has shape {self.shape}")
        axes = tuple(range(n - 2)) + (n - 1, n - 2)
        return Array._wrap(self._dev.transpose(self._data, axes), self._dev)

    def transpose(self, *axes: int) -> Array:
        """Permute axes like ``numpy.ndarray.transpose``; a view, no copy."""
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = tuple(axes[0])
        n = self.ndim
        if not axes:
            axes = tuple(range(n))[::-1]
        norm = tuple(a + n if isinstance(a, int) and -n <= a < 0 else a for a in axes)
        if sorted(norm) != list(range(n)):
            raise ValueError(f"transpose axes {axes} are not a permutation of the {n} axes of shape {self.shape}")
        return Array._wrap(self._dev.transpose(self._data, norm), self._dev)

    def reshape(self, *shape: int) -> Array:
        """A new shape with the same elements (a view where the strides allow, else a copy)."""
        if len(shape) == 1 and not isinstance(shape[0], int):
            shape = tuple(shape[0])
        new = _reshape_target(self.shape, shape)
        return Array._wrap(self._dev.reshape(self._data, new), self._dev)

    def __getitem__(self, key: Any) -> Array:
        """Basic indexing only (ints, slices, ``...``, ``None``): returns a view."""
        key = key if isinstance(key, tuple) else (key,)
        for k in key:
            if not (k is None or k is Ellipsis or isinstance(k, slice)
                    or (isinstance(k, (int, np.integer)) and not isinstance(k, bool))):
                raise TypeError(
                    f"xdev.Array supports basic indexing (ints, slices, ..., None); received "
                    f"{type(k).__name__} {k!r}; download with .numpy() for advanced indexing"
                )
        return Array._wrap(self._dev.getitem(self._data, key), self._dev)

    # -- copies and pickling ----------------------------------------------------------
    def __copy__(self) -> Array:
        """A new array on the same device with a copy of the data (as copy.copy of an ndarray)."""
        return Array._wrap(self._dev.astype(self._data, self.dtype), self._dev, self.algorithm)

    def __deepcopy__(self, memo: dict[int, Any]) -> Array:
        return self.__copy__()

    def __reduce__(self) -> tuple[Callable[..., Array], tuple[str, np.ndarray, str | None]]:
        """Pickled by value: the data (downloaded) and the device's name; unpickling uploads to
        the receiving process's own device of that name."""
        return (_unpickle, (self.device, self.numpy(), self.algorithm))

    def __repr__(self) -> str:
        head = f"xdev.Array(shape={self.shape}, dtype={self.dtype}, device='{self.device}'"
        if self.algorithm:
            head += f", algorithm='{self.algorithm}'"
        if self.size <= 64:
            body = np.array2string(self.numpy(), separator=", ", prefix="  ")
            return f"{head},\n  {body})"
        return head + ")"


def _unpickle(device: str, host: np.ndarray, algorithm: str | None) -> Array:
    dev = get_device(device)
    return Array._wrap(dev.upload(host), dev, algorithm)


def _export_hazard(data: Any) -> str | None:
    """Why a consumer cannot safely share ``data``'s memory through DLPack, or None."""
    if any(s < 0 for s in data.strides):
        return f"negative strides {tuple(data.strides)}"
    if isinstance(data, np.ndarray) and not data.flags.writeable:
        return "read-only memory"
    return None


def _dlpack_device_or_none(dev: Device) -> tuple[int, int] | None:
    try:
        return dev.dlpack_device()
    except BufferError:  # memory DLPack cannot describe (OpenCL)
        return None


def _reshape_target(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve one -1 and check the element count, with NumPy's rules and a clear message."""
    size = int(np.prod(old, dtype=np.int64))
    if sum(1 for d in new if d == -1) > 1 or any(d < -1 for d in new):
        raise ValueError(f"reshape: at most one -1 and no other negative sizes; received {new}")
    known = int(np.prod([d for d in new if d != -1], dtype=np.int64))
    if -1 in new:
        if known == 0 or size % known:
            raise ValueError(f"cannot reshape an array of shape {old} (size {size}) into {new}")
        new = tuple(size // known if d == -1 else d for d in new)
    elif known != size:
        raise ValueError(f"cannot reshape an array of shape {old} (size {size}) into {new}")
    return tuple(int(d) for d in new)
