"""``--reference torch``: PyTorch's matmul and conv2d as yardstick rows.

Users compare xdev with what they would use instead. The rows run on the device of the
xdev backend they stand beside (the CPU for numpy/OpenCL-on-CPU, ``cuda:i`` for cuda),
with the same shapes and dtype and the same numeric settings: TF32 off unless xdev's
is on (``XDEV_CUDA_TF32=1``), ``cudnn.benchmark`` on (torch's own autotuning, as its
users run it). torch is imported only here, only when asked; it is not a dependency.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from xdev.contract import env
from xdev.contract.device import DL_CUDA, DL_CUDA_MANAGED, host_timed

from .sides import ConvCall, Side

LABEL = "torch (reference)"  # the algorithm of every torch row


def torch_or_reason() -> tuple[Any, str | None]:
    try:
        import torch
    except ImportError as e:
        return None, f"torch is not importable ({e}); pip install torch to get the yardstick rows"
    return torch, None


class TorchSide(Side):
    """torch's matmul and conv2d as a side of the benchmark, on the device of the xdev side
    it stands beside."""

    backend = "torch"
    reference = True
    conv_algorithms = ("torch",)

    def __init__(self, torch, device: str, beside: str) -> None:
        self.torch = torch
        self.where = device  # "cpu" or "cuda:0"
        self.key = f"torch:{device}"
        self.beside = beside  # the xdev device key these rows stand beside
        self.is_cpu = device == "cpu"
        self.name = f"PyTorch {getattr(torch, '__version__', '?')} on {device}"
        if self.is_cpu:
            self.isa, self.isa_source = _torch_isa(torch)
        try:
            torch.backends.cudnn.benchmark = True
        except AttributeError:  # a torch without CUDA parts: nothing to set
            pass
        self._numeric_mode()

    def synchronize(self) -> None:
        if not self.is_cpu:
            self.torch.cuda.synchronize(self.where)

    def elapsed(self, fn: Callable[[], Any], repeat: int) -> list[float]:
        return host_timed(fn, repeat, self.synchronize)  # as xdev's Device.elapsed

    def _t(self, host: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(host)).to(self.where)

    def _numeric_mode(self) -> None:
        """TF32 as xdev's is now (XDEV_CUDA_TF32, or a benchmark workload's numeric mode)."""
        tf32 = env.cuda_tf32()
        try:
            self.torch.backends.cuda.matmul.allow_tf32 = tf32
            self.torch.backends.cudnn.allow_tf32 = tf32
        except AttributeError:
            pass

    def matmul_fn(self, ha: np.ndarray, hb: np.ndarray) -> Callable[[], Any]:
        self._numeric_mode()
        a, b = self._t(ha), self._t(hb)
        return lambda: self.torch.matmul(a, b)

    def conv_calls(self, hx: np.ndarray, hw: np.ndarray, hb: np.ndarray, algorithms: list[str]) -> list[ConvCall]:
        self._numeric_mode()
        x, w, b = self._t(hx), self._t(hw), self._t(hb)
        conv = self.torch.nn.functional.conv2d
        t0 = time.perf_counter()
        conv(x, w, b, padding=1)  # cudnn.benchmark's search happens here, as build_s does for xdev
        self.synchronize()
        return [(LABEL, lambda: conv(x, w, b, padding=1), 0.0, time.perf_counter() - t0)]

    @property
    def matmul_label(self) -> str:
        return LABEL

    def matmul_numerics(self, dtype: np.dtype) -> dict[str, Any]:
        return self._numerics(dtype, "matmul")

    def conv_numerics(self, algorithm: str, dtype: np.dtype) -> dict[str, Any]:
        return self._numerics(dtype, "cudnn")

    def _numerics(self, dtype: np.dtype, which: str) -> dict[str, Any]:
        if self.is_cpu:
            return {}
        dtype = np.dtype(dtype)
        if dtype == np.float32:
            flags = self.torch.backends.cuda.matmul if which == "matmul" else self.torch.backends.cudnn
            return {"numeric_mode": "tf32" if getattr(flags, "allow_tf32", False) else "strict-fp32"}
        return {"numeric_mode": {np.dtype(np.float16): "fp16", np.dtype(np.float64): "fp64"}.get(dtype, str(dtype))}

    def info(self) -> dict[str, Any]:
        out = {"backend": "torch", "device": self.key, "name": self.name, "reference": True,
               "beside": self.beside, "torch": getattr(self.torch, "__version__", None), "is_cpu": self.is_cpu,
               "isa": self.isa, "isa_source": self.isa_source}
        try:
            out["threads"] = self.torch.get_num_threads()
        except AttributeError:
            pass
        return out


# torch.backends.cpu.get_cpu_capability() -> the instruction set names xdev uses
_CAPABILITY = {"AVX512": "AVX-512", "AVX512_BF16": "AVX-512", "AVX512_VNNI": "AVX-512", "AVX2": "AVX2",
               "DEFAULT": "SSE", "NEON": "NEON", "SVE256": "SVE"}


def _torch_isa(torch) -> tuple[str | None, str | None]:
    """The instruction set of torch's CPU kernels: ATen's vectorized ones (its cpu capability);
    MKL (matmul) and oneDNN (conv2d) choose theirs at run time from the same CPU flags."""
    try:
        cap = str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:
        return None, None
    return _CAPABILITY.get(cap.upper()), f"torch cpu capability {cap} (ATen; MKL and oneDNN dispatch at run time)"


def _torch_place(torch, dev: Side) -> tuple[str | None, str | None]:
    """(torch's device string for the memory ``dev`` computes in, None and why not): the CPU,
    or the CUDA GPU its DLPack device names. No reason for a device torch has no kind of
    device for (an OpenCL GPU): nothing to stand beside it, nothing to report."""
    if dev.is_cpu:
        return "cpu", None
    try:
        kind, index = dev.device.dlpack_device() if dev.device is not None else (None, None)
    except BufferError:
        kind = index = None
    if kind in (DL_CUDA, DL_CUDA_MANAGED):  # torch calls ROCm GPUs "cuda" too
        if not (hasattr(torch, "cuda") and torch.cuda.is_available()):
            return None, "torch has no CUDA here"
        return f"cuda:{index}", None
    return None, None


def reference_sides(sides: list[Side]) -> tuple[list[TorchSide], list[dict[str, str]]]:
    """One torch side per distinct place the xdev sides compute (the CPU, each CUDA GPU)."""
    torch, reason = torch_or_reason()
    if torch is None:
        return [], [{"backend": "torch (reference)", "reason": reason or ""}]
    out: list[TorchSide] = []
    skipped: list[dict[str, str]] = []
    seen: set[str] = set()
    for side in sides:
        where, why = _torch_place(torch, side)
        if where is None:
            if why:
                skipped.append({"backend": f"torch beside {side.key} (reference)", "reason": why})
            continue
        if where not in seen:
            seen.add(where)
            out.append(TorchSide(torch, where, side.key))
    return out, skipped


# --reference NAME -> the yardstick sides beside the xdev sides (and what was skipped, why)
REFERENCES: dict[str, Callable[[list[Side]], tuple[list[Side], list[dict[str, str]]]]] = {"torch": reference_sides}
