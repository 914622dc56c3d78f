"""``--reference torch``: PyTorch's matmul and conv2d as yardstick rows.

Users compare xdev with what they would use instead. The rows run on the device of the
xdev backend they stand beside (the CPU for numpy/OpenCL-on-CPU, ``cuda:i`` for cuda),
with the same shapes and dtype and the same numeric settings: TF32 off unless xdev's
is on (``XDEV_CUDA_TF32=1``), ``cudnn.benchmark`` on (torch's own autotuning, as its
users run it). torch is imported only here, only when asked; it is not a dependency.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from xdev.contract import env
from xdev.contract.device import host_timed


def torch_or_reason() -> tuple[Any, str | None]:
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not importable ({e}); pip install torch to get the yardstick rows"
    return torch, None


class TorchDevice:
    """Enough of xdev's device interface for the benchmark to time torch calls."""

    backend = "torch"
    build_seconds = 0.0

    def __init__(self, torch, device: str, beside: str) -> None:
        self.torch = torch
        self.device = device  # "cpu" or "cuda:0"
        self.key = f"torch:{device}"
        self.beside = beside  # the xdev device key these rows stand beside
        self.is_cpu = device == "cpu"
        self.name = f"PyTorch {getattr(torch, '__version__', '?')} on {device}"
        tf32 = env.cuda_tf32()
        try:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True
        except AttributeError:  # a torch without CUDA parts: nothing to set
            pass

    def synchronize(self) -> None:
        if not self.is_cpu:
            self.torch.cuda.synchronize(self.device)

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        return host_timed(fn, repeat, self.synchronize)  # as xdev's Device.elapsed

    def _t(self, host: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(host)).to(self.device)

    def matmul_fn(self, ha: np.ndarray, hb: np.ndarray) -> Callable[[], Any]:
        a, b = self._t(ha), self._t(hb)
        return lambda: self.torch.matmul(a, b)

    def conv2d_fn(self, hx: np.ndarray, hw: np.ndarray, hb: np.ndarray | None, padding: int) -> Callable[[], Any]:
        x, w = self._t(hx), self._t(hw)
        b = None if hb is None else self._t(hb)
        conv = self.torch.nn.functional.conv2d
        return lambda: conv(x, w, b, padding=padding)

    def info(self) -> dict[str, Any]:
        out = {"backend": "torch", "device": self.key, "name": self.name, "reference": True,
               "beside": self.beside, "torch": getattr(self.torch, "__version__", None)}
        try:
            out["threads"] = self.torch.get_num_threads()
        except AttributeError:
            pass
        return out


def reference_devices(devices: list) -> tuple[list[TorchDevice], list[dict[str, str]]]:
    """One torch device per distinct place the xdev devices run (the CPU, each CUDA GPU)."""
    torch, reason = torch_or_reason()
    if torch is None:
        return [], [{"backend": "torch (reference)", "reason": reason or ""}]
    out: list[TorchDevice] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for dev in devices:
        if dev.backend == "cuda":
            idx = getattr(dev, "index", None)
            where = f"cuda:{idx if idx is not None else 0}"
            if not (hasattr(torch, "cuda") and torch.cuda.is_available()):
                skipped.append({"backend": f"torch:{where} (reference)", "reason": "torch has no CUDA here"})
                continue
        elif dev.is_cpu:
            where = "cpu"
        else:
            continue  # an OpenCL GPU: torch has no OpenCL device to stand beside it
        if where not in seen:
            seen.add(where)
            out.append(TorchDevice(torch, where, dev.key))
    return out, skipped
