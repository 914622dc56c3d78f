"""CLArray: an OpenCL buffer viewed with an element offset, a shape and element strides."""
from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl as cl

from xdev.contract.shapes import merge_dims


class CLArray:
    """A view into a cl.Buffer. Strides and offset count elements and may be negative or 0."""

    __slots__ = ("buf", "offset", "shape", "strides", "dtype")

    def __init__(self, buf: cl.Buffer | None, offset: int, shape: tuple[int, ...],
                 strides: tuple[int, ...], dtype: np.dtype) -> None:
        self.buf = buf  # None for an array with no elements
        self.offset = offset
        self.shape = shape
        self.strides = strides
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def is_c_contiguous(self) -> bool:
        return self.strides == c_strides(self.shape) or self.size <= 1

    def span(self) -> tuple[int, int]:
        """Lowest and highest element offsets this view touches (relative to the buffer)."""
        lo = hi = self.offset
        for n, s in zip(self.shape, self.strides):
            if n > 1:
                if s > 0:
                    hi += (n - 1) * s
                else:
                    lo += (n - 1) * s
        return lo, hi

    def with_view(self, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> CLArray:
        return CLArray(self.buf, offset, shape, strides, self.dtype)

    def __repr__(self) -> str:
        return f"CLArray(shape={self.shape}, strides={self.strides}, offset={self.offset}, dtype={self.dtype})"


def c_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(out))


def transpose(a: CLArray, axes: tuple[int, ...]) -> CLArray:
    return a.with_view(a.offset, tuple(a.shape[i] for i in axes), tuple(a.strides[i] for i in axes))


def getitem(a: CLArray, key: tuple[Any, ...]) -> CLArray:
    """NumPy basic indexing on shape/strides/offset."""
    n_real = sum(1 for k in key if k is not None and k is not Ellipsis)
    if n_real > a.ndim:
        raise IndexError(f"too many indices for an array of shape {a.shape}: {key!r}")
    if sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    expanded: list[Any] = []
    for k in key:
        if k is Ellipsis:
            expanded.extend([slice(None)] * (a.ndim - n_real))
        else:
            expanded.append(k)
    expanded.extend([slice(None)] * (a.ndim - sum(1 for k in expanded if k is not None)))
    offset, shape, strides, dim = a.offset, [], [], 0
    for k in expanded:
        if k is None:
            shape.append(1)
            strides.append(0)
            continue
        n, s = a.shape[dim], a.strides[dim]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            length = len(range(start, stop, step))
            offset += start * s if length else 0
            shape.append(length)
            strides.append(s * step)
        else:
            i = int(k)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis {dim} with size {n}")
            offset += (i % n) * s
        dim += 1
    return a.with_view(offset, tuple(shape), tuple(strides))


def collapse(shape: tuple[int, ...], *stride_sets: tuple[int, ...]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Merge adjacent dims that are contiguous in every stride set; drop size-1 dims."""
    merged = merge_dims(shape, *stride_sets)
    out_shape = tuple(n for n, _ in merged)
    out_strides = [tuple(ss[k] for _, ss in merged) for k in range(len(stride_sets))]
    return out_shape, out_strides
