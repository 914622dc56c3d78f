"""The dtypes xdev computes in: floats, and integers and bool computed exactly (complex later).

The rule is NumPy's: an operation computes in ``numpy.result_type`` of its operands. Floats
round as the device's accumulation allows; integers wrap around modulo 2**bits of the result
type, as ``numpy.matmul`` does; bool is NumPy's logical matmul (or of ands).
"""
from __future__ import annotations

import numpy as np

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
FLOAT_DTYPES: tuple[np.dtype, ...] = (F16, F32, F64)
BOOL = np.dtype(np.bool_)
INT_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64))
# Computed exactly: integer results wrap around modulo 2**bits of their type.
EXACT_DTYPES: tuple[np.dtype, ...] = INT_DTYPES + (BOOL,)
DTYPES: tuple[np.dtype, ...] = FLOAT_DTYPES + EXACT_DTYPES
DTYPES_TEXT = "float16/32/64, signed and unsigned integers of 8 to 64 bits, or bool"


def is_exact(dtype: np.dtype) -> bool:
    """True for the integer and bool dtypes (exact, wrap-around arithmetic)."""
    return np.dtype(dtype).kind in "iub"
