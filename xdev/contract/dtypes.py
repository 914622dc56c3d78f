"""The dtypes xdev computes in (complex later)."""
from __future__ import annotations

import numpy as np

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
FLOAT_DTYPES: tuple[np.dtype, ...] = (F16, F32, F64)
