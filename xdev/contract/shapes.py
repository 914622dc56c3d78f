"""Argument geometry shared by every backend: conv2d parameters (PyTorch rules), matmul shapes (NumPy rules)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

IntPair = Union[int, tuple[int, int]]

# Kernels index with 32-bit int: a size past this must be refused before a launch.
INT32_MAX = 2**31 - 1
# The largest side of a padded conv2d input: after conv_params every stride, dilation and
# padding is at most this, so kernels can take them as 32-bit ints.
MAX_EXTENT = INT32_MAX


def cdiv(a: int, b: int) -> int:
    """How many blocks of ``b`` cover ``a`` (ceiling division of non-negative ints)."""
    return -(-a // b)


def round_up(n: int, m: int) -> int:
    """``n`` rounded up to a multiple of ``m``."""
    return cdiv(n, m) * m


def check_int32(where: str, hint: str, **sizes: int) -> None:
    """ValueError naming the first size past INT32_MAX: ``where`` says what ran ("matmul on
    OpenCL"), ``hint`` how to get under the limit."""
    for name, v in sizes.items():
        if int(v) > INT32_MAX:
            raise ValueError(f"{where}: {name} = {int(v)} exceeds the kernels' 32-bit index limit ({INT32_MAX}); "
                             f"{hint}")


@dataclass(frozen=True)
class ConvParams:
    """Validated conv2d geometry, shared by every backend (built by :func:`conv_params`)."""

    N: int
    C: int
    H: int
    W: int
    O: int
    kh: int
    kw: int
    groups: int
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    Ho: int
    Wo: int

    def __hash__(self) -> int:
        # Every call's caches are keyed by the params: the hash of 13 fields is computed once.
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.N, self.C, self.H, self.W, self.O, self.kh, self.kw, self.groups, self.stride,
                      self.dilation, self.pad, self.Ho, self.Wo))
            object.__setattr__(self, "_hash", h)
        return h

    @property
    def Cg(self) -> int:
        return self.C // self.groups

    @property
    def Og(self) -> int:
        return self.O // self.groups

    @property
    def K(self) -> int:
        """Reduction length of one output element."""
        return self.Cg * self.kh * self.kw

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.O, self.Ho, self.Wo)

    @property
    def flops(self) -> int:
        return 2 * self.N * self.O * self.Ho * self.Wo * self.K


def _is_int(v: object) -> bool:
    """Python or NumPy integer, not bool (torch accepts numpy integers too)."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _pair(name: str, value: object, minimum: int) -> tuple[int, int]:
    if _is_int(value):
        vals: object = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 1:
        vals = (value[0], value[0])  # torch expands a 1-element sequence
    else:
        vals = value
    try:
        a, b = vals  # type: ignore[misc]
        ok = all(_is_int(v) and v >= minimum for v in (a, b))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"conv2d {name} must be an int >= {minimum}, or a pair (or 1-element tuple) of "
            f"them; received {value!r}"
        )
    return int(a), int(b)


def conv_params(
    xshape: tuple[int, ...],
    wshape: tuple[int, ...],
    bshape: tuple[int, ...] | None,
    stride: IntPair,
    padding: IntPair | str,
    dilation: IntPair,
    groups: int,
) -> ConvParams:
    """Validate conv2d arguments; x must already be 4-D (N, C, H, W)."""
    if len(wshape) != 4:
        raise ValueError(
            f"conv2d weight must have shape (O, C/groups, kH, kW); received shape {tuple(wshape)}"
        )
    N, C, H, W = xshape
    O, Cg, kh, kw = wshape
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"conv2d groups must be a positive int; received {groups!r}")
    groups = int(groups)
    if C % groups:
        raise ValueError(
            f"conv2d groups={groups} must divide the input channels C={C} of x {tuple(xshape)}; "
            f"choose groups among the divisors of {C}"
        )
    if O % groups:
        raise ValueError(
            f"conv2d groups={groups} must divide the output channels O={O} of weight "
            f"{tuple(wshape)}; choose groups among the divisors of {O}"
        )
    if Cg != C // groups:
        raise ValueError(
            f"conv2d weight {tuple(wshape)} has {Cg} input channels per group, but x "
            f"{tuple(xshape)} with groups={groups} has C/groups = {C // groups}; the weight "
            f"must have shape ({O}, {C // groups}, {kh}, {kw}) or x must have {Cg * groups} channels"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"conv2d kernel size must be at least 1x1; received weight {tuple(wshape)}")
    if bshape is not None and tuple(bshape) != (O,):
        raise ValueError(
            f"conv2d bias must have shape ({O},) for weight {tuple(wshape)}; received {tuple(bshape)}"
        )
    sh, sw = _pair("stride", stride, 1)
    dh, dw = _pair("dilation", dilation, 1)
    ekh, ekw = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # extent of the dilated kernel
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            pad = (0, 0, 0, 0)
        elif mode == "same":
            if (sh, sw) != (1, 1):
                raise ValueError(
                    f"conv2d padding='same' needs stride 1 (as in PyTorch); received stride {(sh, sw)}; "
                    f"pass explicit padding for a strided convolution"
                )
            # PyTorch puts the odd extra pixel at the bottom/right.
            th, tw = ekh - 1, ekw - 1
            pad = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        else:
            raise ValueError(
                f"conv2d padding must be an int, a pair of ints, 'valid' or 'same'; received {padding!r}"
            )
    else:
        ph, pw = _pair("padding", padding, 0)
        pad = (ph, ph, pw, pw)
    Hp, Wp = H + pad[0] + pad[1], W + pad[2] + pad[3]
    if max(Hp, Wp) > MAX_EXTENT:
        raise ValueError(
            f"conv2d padding {pad[0]},{pad[1]},{pad[2]},{pad[3]} (top,bottom,left,right) makes the "
            f"padded input {Hp}x{Wp} (x {tuple(xshape)}); xdev allows at most {MAX_EXTENT} (2**31-1) "
            f"pixels per side of the padded input: use less padding"
        )
    if ekh > Hp or ekw > Wp:
        raise ValueError(
            f"conv2d kernel {kh}x{kw} with dilation {(dh, dw)} spans {ekh}x{ekw} pixels, larger "
            f"than the padded input {Hp}x{Wp} (x {tuple(xshape)}, padding {pad[0]},{pad[1]},"
            f"{pad[2]},{pad[3]} top,bottom,left,right); use a smaller kernel or more padding"
        )
    Ho = (Hp - ekh) // sh + 1
    Wo = (Wp - ekw) // sw + 1
    # Larger values than these change nothing (a stride past the last window, a dilation of a
    # 1-tap axis); torch and NumPy accept them up to 2**63. Clamped, every parameter is at most
    # the padded extent, so it fits the 32-bit integers kernels index with, on every backend.
    sh, sw = min(sh, Hp - ekh + 1), min(sw, Wp - ekw + 1)
    dh, dw = (1 if kh == 1 else dh), (1 if kw == 1 else dw)
    return ConvParams(N, C, H, W, O, kh, kw, groups, (sh, sw), (dh, dw), pad, Ho, Wo)


def merge_dims(sizes: tuple[int, ...], *stride_sets: tuple[int, ...]) -> list[tuple[int, tuple[int, ...]]]:
    """Dims as few as possible: [(size, (stride per operand))], outermost first.

    Adjacent dims merge when every operand's outer stride equals its inner stride times the
    inner size (broadcast dims, stride 0, merge with each other). Size-1 dims drop out.
    Backends use it to walk batches and strided copies in as few loops as possible.
    """
    dims = [(n, tuple(s[i] for s in stride_sets)) for i, n in enumerate(sizes) if n != 1]
    out: list[tuple[int, tuple[int, ...]]] = []
    for n, st in dims:
        if out:
            pn, pst = out[-1]
            if all(ps == s * n for ps, s in zip(pst, st)):
                out[-1] = (pn * n, st)
                continue
        out.append((n, st))
    return out


def matmul_shape(ashape: tuple[int, ...], bshape: tuple[int, ...]) -> tuple[int, ...]:
    """The result shape of numpy.matmul, or a ValueError naming both shapes."""
    if len(ashape) == 0 or len(bshape) == 0:
        raise ValueError(
            f"matmul needs operands with at least 1 dimension; received shapes "
            f"{tuple(ashape)} and {tuple(bshape)} (use multiplication for scalars)"
        )
    a2 = (1,) + tuple(ashape) if len(ashape) == 1 else tuple(ashape)
    b2 = tuple(bshape) + (1,) if len(bshape) == 1 else tuple(bshape)
    if a2[-1] != b2[-2]:
        raise ValueError(
            f"matmul shape mismatch: a {tuple(ashape)} @ b {tuple(bshape)}: the last dimension of a "
            f"({a2[-1]}) must equal the {'only' if len(bshape) == 1 else 'second-to-last'} "
            f"dimension of b ({b2[-2]})"
        )
    batch = broadcast_batch(a2[:-2], b2[:-2], ashape, bshape)
    out = batch + (a2[-2], b2[-1])
    if len(ashape) == 1:
        out = out[:-2] + out[-1:]
    if len(bshape) == 1:
        out = out[:-1]
    return out


def broadcast_batch(ab, bb, ashape, bshape) -> tuple[int, ...]:
    n = max(len(ab), len(bb))
    ab = (1,) * (n - len(ab)) + tuple(ab)
    bb = (1,) * (n - len(bb)) + tuple(bb)
    out = []
    for x, y in zip(ab, bb):
        if x != y and x != 1 and y != 1:
            raise ValueError(
                f"matmul batch dimensions do not broadcast: a {tuple(ashape)} @ b {tuple(bshape)} "
                f"(batch {ab[:]} vs {bb[:]}); each batch dimension must match or be 1"
            )
        out.append(y if x == 1 else x)
    return tuple(out)


def dgrad_as_forward(p: ConvParams) -> ConvParams | None:
    """The forward convolution whose result is conv2d's grad_x, for stride 1 (else None).

    grad_x = conv2d(grad_y, w') with w'[g*Cg + c, o, i, j] = w[g*Og + o, c, kh-1-i, kw-1-j],
    padded by the dilated kernel extent minus 1 minus the forward padding (None when the
    forward padding exceeds that: some outputs then read no input at all).
    """
    if p.stride != (1, 1):
        return None
    ekh, ekw = p.dilation[0] * (p.kh - 1) + 1, p.dilation[1] * (p.kw - 1) + 1
    pt, pb, pl, pr = p.pad
    pad = (ekh - 1 - pt, ekh - 1 - pb, ekw - 1 - pl, ekw - 1 - pr)
    if min(pad) < 0:
        return None
    return ConvParams(p.N, p.O, p.Ho, p.Wo, p.C, p.kh, p.kw, p.groups, (1, 1), p.dilation, pad, p.H, p.W)
