"""conv2d_backward: the gradients of conv2d, through the same dispatch path as the forward pass."""
from __future__ import annotations

from typing import Any, Iterable, NamedTuple

import numpy as np

from ._array import Array
from ._ops import _batched_x, _device_for, _operands, _unavailable_algorithm
from .contract import IntPair, conv_params, is_exact

NEEDS = ("x", "w", "bias")


class Conv2dGrads(NamedTuple):
    """The gradients of ``conv2d(x, w, bias, ...)``; None for what ``needs`` left out."""

    grad_x: Array | None
    grad_w: Array | None
    grad_bias: Array | None

    @property
    def algorithm(self) -> str | None:
        """The algorithm that computed the gradients (also on each result's ``.algorithm``)."""
        for g in self:
            if g is not None:
                return g.algorithm
        return None


def _needs(needs: Any) -> frozenset[str]:
    items: Iterable[Any] = (needs,) if isinstance(needs, str) else needs
    try:
        got = tuple(items)
    except TypeError:
        got = None
    if got is None or any(n not in NEEDS for n in got):
        raise ValueError(
            f"conv2d_backward needs= names the gradients to compute, a subset of {NEEDS}; "
            f"received {needs!r}"
        )
    return frozenset(got)


def conv2d_backward(
    grad_y: Any,
    x: Any,
    w: Any,
    *,
    stride: IntPair = 1,
    padding: IntPair | str = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    needs: Iterable[str] | str = NEEDS,
    algorithm: str = "auto",
    backend: str | None = None,
) -> Conv2dGrads:
    """Gradients of ``conv2d(x, w, bias, stride, padding, dilation, groups)`` for upstream ``grad_y``.

    Values equal PyTorch autograd's: ``grad_x`` has x's shape, ``grad_w`` w's, ``grad_bias``
    ``(O,)`` (the bias itself is not needed: the gradients do not depend on it). ``grad_y``
    has the forward output's shape, ``(N, O, Ho, Wo)`` (``(O, Ho, Wo)`` for an unbatched x).
    dtypes promote as in the forward pass. ``algorithm``: ``"auto"`` or one of the device's
    ``conv_algorithms``; the results' ``.algorithm`` says which ran.
    """
    wanted = _needs(needs)
    dev, why = _device_for(backend, (grad_y, x, w))
    dt = np.result_type(*(v.dtype if isinstance(v, Array) else np.asarray(v).dtype for v in (grad_y, x, w)))
    if is_exact(dt):
        # As torch autograd: gradients are of floating-point data (the forward is exact).
        raise TypeError(
            f"conv2d_backward computes gradients in float16, float32 or float64; the operands "
            f"promote to {dt}; convert them first, e.g. xdev.asarray(x, dtype='float32')")
    gyd, xd, wd = _operands("conv2d_backward", dev, why, (grad_y, x, w), ("grad_y", "x", "w"))
    xshape = tuple(xd.shape)
    xd, unbatched = _batched_x("conv2d_backward", dev, xd)
    p = conv_params(tuple(xd.shape), tuple(wd.shape), None, stride, padding, dilation, groups)
    want = p.out_shape[1:] if unbatched else p.out_shape
    if tuple(gyd.shape) != want:
        raise ValueError(
            f"conv2d_backward: grad_y must have the forward output's shape {want} (x {xshape}, "
            f"w {tuple(wd.shape)}, stride {stride!r}, padding {p.pad[0]},{p.pad[1]},{p.pad[2]},"
            f"{p.pad[3]} top,bottom,left,right, dilation {dilation!r}, groups {p.groups}); "
            f"received shape {tuple(gyd.shape)}: pass the gradient of conv2d's result with the "
            f"same parameters"
        )
    if unbatched:
        gyd = dev.reshape(gyd, p.out_shape)
    if algorithm != "auto" and algorithm not in dev.conv_algorithms:
        _unavailable_algorithm("conv2d_backward", dev, algorithm)
    gx, gw, gb, ran = dev.conv2d_backward(gyd, xd, wd, p, wanted, algorithm)
    if gx is not None and unbatched:
        gx = dev.reshape(gx, xshape)
    return Conv2dGrads(
        *(None if g is None else Array._wrap(g, dev, ran) for g in (gx, gw, gb))
    )
