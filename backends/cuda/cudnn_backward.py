"""conv2d backward through cuDNN's frontend: one dgrad graph (grad_x) and one wgrad graph (grad_w).

The numeric rules are the forward pass's (cudnn_tune.deselected_notes): engines that round
inputs down (TF32, float16 down-conversion) or reduce in lower precision are deselected unless
``XDEV_CUDA_TF32=1`` opts in; Winograd/FFT follow the numeric mode and ``XDEV_CUDNN_FAST``
(cudnn_tune.winograd_fft_allowed). The plan is the
heuristics' first (modes A then FALLBACK) that builds, as the forward pass chooses without
autotuning; the forward's timed autotuning and disk cache are not applied to dgrad/wgrad yet. Tensors are packed NCHW; asymmetric
padding is pre/post padding; groups come from the weight's C/groups dimension. float16 that
cuDNN cannot do with float accumulation is computed in float32 and rounded once.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import cupy
import numpy as np

from xdev.contract import F16 as _F16, F32 as _F32, F64 as _F64
from xdev.contract import env

from . import cudnn_tune
from .cudnn_conv import frontend
from .cudnn_tune import CudnnUnsupported

_CACHE_SIZE = 128


def _contig(shape) -> list[int]:
    out, acc = [], 1
    for n in reversed(shape):
        out.append(acc)
        acc *= max(int(n), 1)
    return out[::-1]


def _aligned_contiguous(a: Any) -> Any:
    """a when C-contiguous and 16-byte aligned (cuDNN's vectorized engines need it), else a copy."""
    if a.flags.c_contiguous and a.data.ptr % 16 == 0:
        return a
    return a.copy()


def deselected_notes(mod: Any, dt: np.dtype, p: Any, tf32: bool) -> list[Any]:
    """The numerical notes xdev refuses: the forward pass's rule (cudnn_tune.deselected_notes)."""
    spec = cudnn_tune.ConvSpec(
        dtype=dt.name, xshape=(p.N, p.C, p.H, p.W), x_layout="nchw", wshape=(p.O, p.Cg, p.kh, p.kw),
        stride=tuple(p.stride), dilation=tuple(p.dilation), pad=tuple(p.pad), out_hw=(p.Ho, p.Wo),
        has_bias=False, tf32=tf32, fast=cudnn_tune.winograd_fft_allowed(dt.name, tf32, env.cudnn_fast()))
    return [getattr(mod.numerical_note, n) for n in cudnn_tune.deselected_notes(spec) if hasattr(mod.numerical_note, n)]


class CudnnBackward:
    """Per-device dgrad/wgrad graphs, cached by (kind, dtype, geometry, switches)."""

    def __init__(self, device_id: int, compute_capability: tuple[int, int]) -> None:
        self.device_id = device_id
        self.cc = compute_capability
        self.build_seconds = 0.0
        self._handle: Any = None
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def _tf32(self) -> bool:
        return env.cuda_tf32() and self.cc >= (8, 0)

    def _build(self, mod: Any, kind: str, dt: np.dtype, p: Any) -> tuple[Any, dict[str, Any], Any]:
        cd = {_F16: mod.data_type.HALF, _F32: mod.data_type.FLOAT, _F64: mod.data_type.DOUBLE}[dt]
        acc = mod.data_type.DOUBLE if dt == _F64 else mod.data_type.FLOAT
        if self._handle is None:
            self._handle = mod.create_handle()  # bound to the current device (ours)
        g = mod.pygraph(io_data_type=cd, intermediate_data_type=acc, compute_data_type=acc, handle=self._handle)
        xs, ws, ys = [p.N, p.C, p.H, p.W], [p.O, p.Cg, p.kh, p.kw], [p.N, p.O, p.Ho, p.Wo]
        pt, pb, pl, pr = p.pad
        geo = dict(pre_padding=[pt, pl], post_padding=[pb, pr], stride=list(p.stride),
                   dilation=list(p.dilation), compute_data_type=acc)
        DY = g.tensor(name="DY", dim=ys, stride=_contig(ys), data_type=cd)
        if kind == "dgrad":
            Wt = g.tensor(name="W", dim=ws, stride=_contig(ws), data_type=cd)
            out = g.conv_dgrad(loss=DY, filter=Wt, name="dgrad", **geo)
            out.set_output(True).set_dim(xs).set_stride(_contig(xs)).set_data_type(cd)
            tensors = {"gy": DY, "w": Wt, "out": out}
        else:
            X = g.tensor(name="X", dim=xs, stride=_contig(xs), data_type=cd)
            out = g.conv_wgrad(image=X, loss=DY, name="wgrad", **geo)
            out.set_output(True).set_dim(ws).set_stride(_contig(ws)).set_data_type(cd)
            tensors = {"gy": DY, "x": X, "out": out}
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([mod.heur_mode.A, mod.heur_mode.FALLBACK])
        g.deselect_numeric_notes(deselected_notes(mod, dt, p, self._tf32()))
        g.check_support()
        g.build_plans()
        workspace = cupy.empty(max(int(g.get_workspace_size()), 1), dtype=np.uint8)
        return g, tensors, workspace

    def _plan(self, mod: Any, kind: str, dt: np.dtype, p: Any):
        key = (kind, dt.str, p, self._tf32(), env.cudnn_fast())
        hit = self._cache.get(key)
        if hit is None:
            t0 = time.perf_counter()
            try:
                hit = self._build(mod, kind, dt, p)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:  # cudnnGraphNotSupportedError, RuntimeError, ...
                hit = f"{kind}: {type(e).__name__}: {e}"
            self.build_seconds += time.perf_counter() - t0
            self._cache[key] = hit
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        if isinstance(hit, str):
            raise CudnnUnsupported(hit)
        return hit

    def _run(self, mod: Any, kind: str, gy: Any, other: Any, p: Any) -> Any:
        dt = np.dtype(gy.dtype)
        shape = (p.N, p.C, p.H, p.W) if kind == "dgrad" else (p.O, p.Cg, p.kh, p.kw)
        out = cupy.empty(shape, dt)
        with self._lock:
            graph, t, workspace = self._plan(mod, kind, dt, p)
            pack = {t["gy"]: gy, t["w" if kind == "dgrad" else "x"]: other, t["out"]: out}
            try:
                mod.set_stream(handle=self._handle, stream=cupy.cuda.get_current_stream().ptr)
                graph.execute(pack, workspace, handle=self._handle)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                message = f"{kind} execution failed: {type(e).__name__}: {e}"
                self._cache[(kind, dt.str, p, self._tf32(), env.cudnn_fast())] = message
                raise CudnnUnsupported(message) from e
        return out

    def backward(self, gy: Any, x: Any, w: Any, p: Any, need_x: bool, need_w: bool) -> tuple[Any, Any]:
        """(grad_x, grad_w), None where not needed. Raises CudnnUnsupported."""
        mod, why = frontend()
        if mod is None:
            raise CudnnUnsupported(why or "cuDNN unavailable")
        gy = _aligned_contiguous(gy)
        out = []
        for kind, need, other in (("dgrad", need_x, w), ("wgrad", need_w, x)):
            if not need:
                out.append(None)
                continue
            other = _aligned_contiguous(other)
            try:
                out.append(self._run(mod, kind, gy, other, p))
            except CudnnUnsupported:
                if gy.dtype != _F16:
                    raise
                # No float16 engine with float accumulation: float32 in, one rounding out.
                out.append(self._run(mod, kind, gy.astype(_F32), other.astype(_F32), p).astype(_F16))
        return out[0], out[1]
