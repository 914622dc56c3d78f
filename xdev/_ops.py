"""The public operations and the one dispatch path every backend goes through."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ._array import Array
from ._config import _context, default_device
from .contract import IntPair, conv_params, matmul_shape
from ._registry import get_device, opened_devices
from .contract import DTYPES, DTYPES_TEXT, Device, fork, is_exact



def _dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    # (`dt in DTYPES` is true for None: np.dtype('float64') == None.)
    if dt is None or dt not in DTYPES:
        raise TypeError(
            f"xdev computes in {DTYPES_TEXT}; received dtype {dtype!r}; "
            f"pass one of those (e.g. dtype='float32')"
        )
    return dt  # type: ignore[return-value]


def _host(obj: Any, dtype: np.dtype | None, role: str) -> np.ndarray:
    """``obj`` as NumPy's asarray makes it (Python ints: int64, floats: float64, bools: bool)."""
    arr = np.asarray(obj) if dtype is None else np.asarray(obj, dtype=dtype)
    if arr.dtype not in DTYPES:
        raise TypeError(
            f"{role}: xdev computes in {DTYPES_TEXT}; received data of dtype "
            f"{arr.dtype}; convert it first, e.g. xdev.asarray(data, dtype='float32')"
        )
    return arr


def _device_for(backend: str | None, inputs: Sequence[Any]) -> tuple[Device, str]:
    """Resolve the device and say what chose it (for error messages)."""
    if backend is not None:
        return get_device(backend), f"backend={backend!r}"
    spec = _context.get()
    if spec is not None:
        return get_device(spec), f"use_backend({spec!r})"
    for x in inputs:
        if isinstance(x, Array):
            return x._dev, "its first xdev.Array input"
    return default_device(), "the default backend"


def _mixed(op: str, role: str, x: Array, dev: Device, why: str) -> TypeError:
    return TypeError(
        f"{op} runs on {dev.key} (chosen by {why}) but {role} is an xdev.Array on {x.device}; "
        f"nothing moves between devices silently: move it with {role}.to({dev.key!r}), or "
        f"move the others with .to({x.device!r})"
    )


def _operands(op: str, dev: Device, why: str, xs: Sequence[Any], roles: Sequence[str]) -> list[Any]:
    """Native device arrays for every operand (None stays None), promoted to one dtype."""
    hosts: list[Any] = []
    for x, role in zip(xs, roles):
        if x is None or isinstance(x, Array):
            if x is not None and x._dev is not dev:
                raise _mixed(op, role, x, dev, why)
            hosts.append(x)
        else:
            hosts.append(_host(x, None, role))
    dts = [(h._data.dtype if isinstance(h, Array) else h.dtype) for h in hosts if h is not None]
    dt = np.result_type(*dts)
    dev.check_dtype(dt)
    out: list[Any] = []
    for h in hosts:
        if h is None:
            out.append(None)
        elif isinstance(h, Array):
            out.append(h._data if h._data.dtype == dt else dev.astype(h._data, dt))
        else:
            out.append(dev.borrow(h if h.dtype == dt else h.astype(dt)))
    return out


def asarray(obj: Any, dtype: Any = None, backend: str | None = None) -> Array:
    """Upload ``obj`` (anything NumPy accepts) to a device; always a copy.

    An xdev.Array already on the resolved device is returned as is (converted if
    ``dtype`` differs); one on another device is an error: use ``.to()``.
    """
    dt = None if dtype is None else _dtype(dtype)
    dev, why = _device_for(backend, (obj,))
    if isinstance(obj, Array):
        if obj._dev is not dev:
            raise _mixed("asarray", "obj", obj, dev, why)
        if dt is None or obj.dtype == dt:
            return obj
        dev.check_dtype(dt)
        return Array._wrap(dev.astype(obj._data, dt), dev)
    host = _host(obj, dt, "asarray")
    dev.check_dtype(host.dtype)
    return Array._wrap(dev.upload(host), dev)


def matmul(a: Any, b: Any, *, backend: str | None = None) -> Array:
    """Matrix product with ``numpy.matmul`` semantics (1-D promotion, broadcast batches)."""
    # Fast path: two arrays of one device, same dtype, no context or explicit backend.
    if (
        backend is None
        and type(a) is Array
        and type(b) is Array
        and a._dev is b._dev
        and a._data.dtype == b._data.dtype
        and _context.get() is None
    ):
        dev = a._dev
        ad, bd = a._data, b._data
    else:
        for role, x in (("a", a), ("b", b)):
            if x is None:
                raise TypeError(
                    f"matmul operand {role} is None; pass an xdev.Array or anything NumPy accepts "
                    f"(a nested list, a numpy.ndarray)"
                )
        dev, why = _device_for(backend, (a, b))
        ad, bd = _operands("matmul", dev, why, (a, b), ("a", "b"))
    try:
        out = dev.matmul(ad, bd)
    except ValueError:
        matmul_shape(tuple(ad.shape), tuple(bd.shape))  # raises the contract's message
        raise
    return Array._wrap(out, dev)


def conv2d(
    x: Any,
    w: Any,
    bias: Any = None,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    algorithm: str = "auto",
    *,
    backend: str | None = None,
) -> Array:
    """2-D cross-correlation with ``torch.nn.functional.conv2d`` semantics.

    x ``(N, C, H, W)`` or ``(C, H, W)``, w ``(O, C/groups, kH, kW)``, bias ``(O,)``.
    ``algorithm``: ``"auto"``, ``"direct"``, ``"gemm"`` (and ``"cudnn"`` on CUDA); the
    result's ``.algorithm`` says which ran.
    """
    if (
        backend is None
        and type(x) is Array
        and type(w) is Array
        and x._dev is w._dev
        and x._data.dtype == w._data.dtype
        and (bias is None or (type(bias) is Array and bias._dev is x._dev and bias._data.dtype == x._data.dtype))
        and _context.get() is None
    ):
        # Fast path (as matmul's): arrays of one device and dtype, nothing to resolve or upload.
        dev = x._dev
        xd, wd, bd = x._data, w._data, (None if bias is None else bias._data)
    else:
        dev, why = _device_for(backend, (x, w, bias))
        xd, wd, bd = _operands("conv2d", dev, why, (x, w, bias), ("x", "w", "bias"))
    if len(xd.shape) == 4:
        unbatched = False
    else:
        xd, unbatched = _batched_x("conv2d", dev, xd)
    xshape, wshape = tuple(xd.shape), tuple(wd.shape)
    bshape = None if bd is None else tuple(bd.shape)
    if type(stride) is int and type(padding) is int and type(dilation) is int and type(groups) is int:
        # The common call: every parameter a plain int, so the values are the cache key.
        p = _PARAMS.get((xshape, wshape, bshape, stride, padding, dilation, groups))
        if p is None:
            p = _conv_params(xshape, wshape, bshape, stride, padding, dilation, groups)
    else:
        p = _conv_params(xshape, wshape, bshape, stride, padding, dilation, groups)
    if algorithm != "auto":
        if algorithm not in dev.conv_algorithms:
            _unavailable_algorithm("conv2d", dev, algorithm)
        if algorithm not in dev.exact_conv_algorithms and is_exact(xd.dtype):
            raise ValueError(
                f"conv2d algorithm {algorithm!r} has no {xd.dtype} kernels on {dev.key} (integer and "
                f"bool data run exactly with {', '.join(('auto',) + dev.exact_conv_algorithms)}); "
                f"choose one of those, or convert the data to a float dtype")
    out, ran = dev.conv2d(xd, wd, bd, p, algorithm)
    if unbatched:
        out = dev.reshape(out, p.out_shape[1:])
    return Array._wrap(out, dev, ran)


def _batched_x(op: str, dev: Device, xd: Any) -> tuple[Any, bool]:
    """x as (N, C, H, W), and whether it came unbatched as (C, H, W) (conv2d and its backward)."""
    xshape = tuple(xd.shape)
    if len(xshape) not in (3, 4):
        raise ValueError(
            f"{op} expects x of shape (N, C, H, W) or (C, H, W); received shape {xshape}"
        )
    if len(xshape) == 3:
        return dev.reshape(xd, (1,) + xshape), True
    return xd, False


def _unavailable_algorithm(op: str, dev: Device, algorithm: str) -> None:
    """Raise the error for an ``algorithm`` that is not in ``dev.conv_algorithms``."""
    hint = dev.unavailable_reason(algorithm)
    raise ValueError(
        f"{op} algorithm {algorithm!r} is not available on {dev.key}"
        + (f" ({hint})" if hint else "")
        + f"; choose one of {', '.join(('auto',) + tuple(dev.conv_algorithms))}"
    )


def _param_key(v: Any) -> Any:
    """A cache key for one conv parameter that tells 1, 1.0 and True apart (their hashes and ==
    agree), or None for anything but an int, a str or a tuple of ints (validate it uncached)."""
    t = type(v)
    if t is int:
        return v
    if t is str:
        return ("str", v)
    if t is tuple and all(type(e) is int for e in v):
        return ("tuple", *v)
    return None


# Validated conv parameters by (x shape, w shape, bias shape, and the parameters' _param_key).
_PARAMS: dict[tuple[Any, ...], Any] = {}
_PARAMS_MAX = 512


def _conv_params(xshape: tuple[int, ...], wshape: tuple[int, ...], bshape: tuple[int, ...] | None, stride: Any,
                 padding: Any, dilation: Any, groups: Any) -> Any:
    """conv_params, memoized on the arguments' values and exact types (the validation costs
    ~10 us per call; a bool or float must still be refused after an equal int was accepted).
    Shapes come from device arrays (ints); only the four parameters need their types checked.
    Errors are never cached: a refused call is validated (and refused) again."""
    ks, kp, kd, kg = _param_key(stride), _param_key(padding), _param_key(dilation), _param_key(groups)
    if ks is None or kp is None or kd is None or type(groups) is not int:
        return conv_params(xshape, wshape, bshape, stride, padding, dilation, groups)
    key = (xshape, wshape, bshape, ks, kp, kd, kg)
    p = _PARAMS.get(key)
    if p is None:
        p = conv_params(xshape, wshape, bshape, stride, padding, dilation, groups)
        if len(_PARAMS) >= _PARAMS_MAX:
            _PARAMS.clear()  # a shape sweep: start over rather than grow without bound
        _PARAMS[key] = p
    return p


# Array's @ operator (declared in _array.py) is matmul.
Array.__matmul__ = lambda self, other: matmul(self, other)  # type: ignore[method-assign]
Array.__rmatmul__ = lambda self, other: matmul(other, self)  # type: ignore[method-assign]


def synchronize(backend: str | None = None) -> None:
    """Wait for queued work to finish: on ``backend``'s device, or by default on every
    device xdev has opened in this process (work queued with ``backend=`` included)."""
    if backend is not None:
        get_device(backend).synchronize()
        return
    for dev in opened_devices():
        if not fork.inherited(dev.backend):  # (in a fork() child: nothing of this process's is queued there)
            dev.synchronize()
