"""DLPack and the CUDA array interface for CUDA arrays.

xdev queues its work on CuPy's current stream of the device, so CuPy's own exporters and
importers, called on this device, implement the DLPack stream rules: an exporter makes the
consumer's stream wait for that stream, an importer passes it as the consumer stream.
"""
from __future__ import annotations

from typing import Any

import cupy

from xdev.contract.device import DL_CUDA, DL_CUDA_MANAGED

from .errors import guard


def to_dlpack(dev: Any, data: Any, *, stream: Any, max_version: tuple[int, int] | None, copy: bool | None) -> Any:
    with guard(dev, f"exporting {tuple(data.shape)} {data.dtype} through DLPack"):
        src = data.copy() if copy else data
        if max_version is None:
            return src.__dlpack__(stream=stream)
        try:
            return src.__dlpack__(stream=stream, max_version=max_version)
        except TypeError:  # CuPy 13: legacy capsules only, which every consumer reads
            return src.__dlpack__(stream=stream)


def wrap_dlpack(dev: Any, obj: Any, src: tuple[int, int], copy: bool | None) -> Any | None:
    """A cupy.ndarray viewing ``obj`` if it lives on ``dev`` (or in managed memory), else None."""
    if not ((src[0] == DL_CUDA and src[1] == dev.index) or src[0] == DL_CUDA_MANAGED):
        return None
    with guard(dev, "importing an array through DLPack"):
        data = cupy.from_dlpack(obj)
        return data.copy() if copy else data


def cuda_array_interface(dev: Any, data: Any) -> dict[str, Any]:
    with dev._cp:  # CuPy reports its current stream of this device (CAI v3 "stream")
        return data.__cuda_array_interface__
