"""conv2d through cuDNN's official Python frontend (``nvidia-cudnn-frontend``, module ``cudnn``).

One cuDNN graph is built per (shape, strides, dtype, parameters, switches) and cached with its
workspace. Tensors are NCHW with explicit dims and strides (the frontend would otherwise pick
channels-last for the output); asymmetric padding is pre/post padding; groups come from the
weight's C/groups dimension; the bias is a pointwise add of a (1, O, 1, 1) tensor inside the
graph, so float16 results are rounded once. Numerics: engines whose notes say they round
inputs down (TF32 tensor cores for float32, DOWN_CONVERT_INPUTS), reduce in lower precision,
or use Winograd/FFT transforms are deselected, unless ``XDEV_CUDA_TF32=1`` (TF32) or
``XDEV_CUDNN_FAST=1`` (Winograd, FFT) opt in.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

from xdev.contract import F16 as _F16, F32 as _F32, F64 as _F64
from xdev.contract import env

INSTALL_HINT = 'pip install "xdev[cudnn]"'
_CACHE_SIZE = 128


_frontend_state: tuple[Any, str | None] | None = None


def frontend() -> tuple[Any, str | None]:
    """(cudnn module, None) when the frontend and the cuDNN library load, else (None, why not)."""
    global _frontend_state
    if _frontend_state is None:
        try:
            import cudnn  # noqa: PLC0415  (optional extra)
        except Exception as e:  # ImportError, or a broken install
            _frontend_state = (None, f"the cuDNN Python frontend is not importable ({type(e).__name__}: {e}); "
                                     f"install it with {INSTALL_HINT}")
        else:
            try:
                cudnn.backend_version()
            except Exception as e:
                _frontend_state = (None, f"the cuDNN frontend {getattr(cudnn, '__version__', '?')} is installed but "
                                         f"the cuDNN library did not load ({e}); install it with {INSTALL_HINT} or put "
                                         f"libcudnn.so.9 on LD_LIBRARY_PATH")
            else:
                _frontend_state = (cudnn, None)
    return _frontend_state


def versions() -> dict[str, Any]:
    mod, why = frontend()
    if mod is None:
        return {"cudnn": None, "cudnn_unavailable": why}
    out: dict[str, Any] = {"cudnn_frontend": getattr(mod, "__version__", None)}
    try:
        v = int(mod.backend_version())  # cuDNN 9: major*10000 + minor*100 + patch
        out["cudnn"] = f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    except Exception:
        out["cudnn"] = None
    return out


class CudnnUnsupported(Exception):
    """cuDNN has no engine for this convolution under xdev's numeric rules."""


@dataclass
class _Plan:
    graph: Any
    tensors: dict[str, Any]
    workspace: Any
    kind: str  # "fused" (conv + bias in the graph) or "conv" (bias added afterwards)


@dataclass
class _Failure:
    message: str


@dataclass
class CudnnConv:
    """Per-device state: the cuDNN handle and the graph cache."""

    device_id: int
    compute_capability: tuple[int, int] = (0, 0)
    build_seconds: float = 0.0  # time spent building cuDNN graphs (plans) so far
    _handle: Any = None
    _cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- graph construction --------------------------------------------------------------
    def _tf32(self) -> bool:
        """TF32 asked for, on a GPU that has it (compute capability 8.0+)."""
        return env.cuda_tf32() and self.compute_capability >= (8, 0)

    def _handle_for_device(self, mod: Any) -> Any:
        if self._handle is None:
            self._handle = mod.create_handle()  # bound to the current device (ours)
        return self._handle

    def _build(self, mod: Any, dt: np.dtype, xshape, xstrides, p, kind: str) -> _Plan:
        cd = {_F16: mod.data_type.HALF, _F32: mod.data_type.FLOAT, _F64: mod.data_type.DOUBLE}[dt]
        acc = mod.data_type.DOUBLE if dt == _F64 else mod.data_type.FLOAT
        handle = self._handle_for_device(mod)
        g = mod.pygraph(io_data_type=cd, intermediate_data_type=acc, compute_data_type=acc, handle=handle)
        O, Cg, kh, kw = p.O, p.Cg, p.kh, p.kw
        X = g.tensor(name="X", dim=list(xshape), stride=list(xstrides), data_type=cd)
        Wt = g.tensor(name="W", dim=[O, Cg, kh, kw], stride=[Cg * kh * kw, kh * kw, kw, 1], data_type=cd)
        pt, pb, pl, pr = p.pad
        Y = g.conv_fprop(
            image=X, weight=Wt, pre_padding=[pt, pl], post_padding=[pb, pr],
            stride=list(p.stride), dilation=list(p.dilation), compute_data_type=acc, name="conv",
        )
        tensors = {"x": X, "w": Wt}
        if kind == "fused":
            B = g.tensor(name="B", dim=[1, O, 1, 1], stride=[O, 1, 1, 1], data_type=cd)
            Y = g.bias(name="bias", input=Y, bias=B)
            tensors["bias"] = B
        N, Ho, Wo = p.N, p.Ho, p.Wo
        Y.set_output(True).set_dim([N, O, Ho, Wo]).set_stride([O * Ho * Wo, Ho * Wo, Wo, 1]).set_data_type(cd)
        tensors["y"] = Y
        g.validate()
        g.build_operation_graph()
        g.create_execution_plans([mod.heur_mode.A, mod.heur_mode.FALLBACK])
        notes = ["REDUCED_PRECISION_REDUCTION"]
        if not (dt == _F32 and self._tf32()):
            # For float32 I/O, tensor cores mean TF32 (or an emulation of FP32 through it), and
            # down-converted inputs mean TF32 or float16: only with XDEV_CUDA_TF32=1.
            notes.append("DOWN_CONVERT_INPUTS")
            if dt == _F32:
                notes.append("TENSOR_CORE")
        if not env.cudnn_fast():
            notes += ["WINOGRAD", "WINOGRAD_TILE_4x4", "WINOGRAD_TILE_6x6", "WINOGRAD_TILE_13x13", "FFT"]
        present = [getattr(mod.numerical_note, n) for n in notes if hasattr(mod.numerical_note, n)]
        g.deselect_numeric_notes(present)
        g.check_support()
        g.build_plans()
        ws = int(g.get_workspace_size())
        workspace = cupy.empty(max(ws, 1), dtype=np.uint8)
        return _Plan(g, tensors, workspace, kind)

    def _plan(self, mod: Any, dt: np.dtype, xshape, xstrides, p, has_bias: bool) -> _Plan:
        key = (dt.str, tuple(xshape), tuple(xstrides), p, has_bias, self._tf32(), env.cudnn_fast())
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            if isinstance(hit, _Failure):
                raise CudnnUnsupported(hit.message)
            return hit
        # With a bias: conv + bias in one graph (one rounding); else the conv alone and the
        # bias added afterwards, which only float32/float64 can afford (float16 would round twice).
        kinds = ["fused", "conv"] if has_bias else ["conv"]
        errors = []
        plan: _Plan | _Failure | None = None
        t0 = time.perf_counter()
        for kind in kinds:
            try:
                plan = self._build(mod, dt, xshape, xstrides, p, kind)
                break
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:  # cudnnGraphNotSupportedError, RuntimeError, ...
                errors.append(f"{kind}: {type(e).__name__}: {e}")
        self.build_seconds += time.perf_counter() - t0
        if plan is None:
            plan = _Failure("; ".join(errors) or "no plan")
        self._cache[key] = plan
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)
        if isinstance(plan, _Failure):
            raise CudnnUnsupported(plan.message)
        return plan

    # -- execution ------------------------------------------------------------------------
    def conv2d(self, x: Any, w: Any, bias: Any | None, p: Any, y: Any) -> None:
        """y (N, O, Ho, Wo), C-contiguous and preallocated, = conv(x, w) + bias. Raises CudnnUnsupported."""
        mod, why = frontend()
        if mod is None:
            raise CudnnUnsupported(why or "cuDNN unavailable")
        dt = np.dtype(x.dtype)
        if dt == _F16 and bias is not None:
            # Prefer the fused graph; if cuDNN has none, compute in float32 and round once.
            try:
                return self._run(mod, x, w, bias, p, y, require_fused=True)
            except CudnnUnsupported:
                y32 = cupy.empty(y.shape, _F32)
                self._run(mod, x.astype(_F32), w.astype(_F32), bias.astype(_F32), p, y32)
                y[...] = y32.astype(_F16)
                return None
        return self._run(mod, x, w, bias, p, y)

    def _run(self, mod, x, w, bias, p, y, require_fused: bool = False) -> None:
        ready = _cudnn_ready(x)
        try:
            return self._run_ready(mod, ready, w, bias, p, y, require_fused)
        except CudnnUnsupported:
            if ready.flags.c_contiguous:
                raise
        # cuDNN declined channels-last input with NCHW output: give it NCHW.
        return self._run_ready(mod, ready.copy(), w, bias, p, y, require_fused)

    def _run_ready(self, mod, x, w, bias, p, y, require_fused: bool) -> None:
        xstrides = _layout_strides(x)
        x = _restride(x, xstrides)  # the buffer's strides exactly as the graph declares them
        w = _aligned_contiguous(w)
        dt = np.dtype(x.dtype)
        with self._lock:
            plan = self._plan(mod, dt, x.shape, xstrides, p, bias is not None)
            if require_fused and plan.kind != "fused":
                raise CudnnUnsupported("cuDNN has no fused conv + bias graph for float16 here")
            pack = {plan.tensors["x"]: x, plan.tensors["w"]: w, plan.tensors["y"]: y}
            if plan.kind == "fused":
                pack[plan.tensors["bias"]] = _aligned_contiguous(bias).reshape(1, p.O, 1, 1)
            handle = self._handle_for_device(mod)
            try:
                mod.set_stream(handle=handle, stream=cupy.cuda.get_current_stream().ptr)
                plan.graph.execute(pack, plan.workspace, handle=handle)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                # Remember it: "auto" then goes straight to gemm for this geometry.
                message = f"execution failed: {type(e).__name__}: {e}"
                key = next((k for k, v in self._cache.items() if v is plan), None)
                if key is not None:
                    self._cache[key] = _Failure(message)
                raise CudnnUnsupported(message) from e
        if bias is not None and plan.kind != "fused":
            y += bias.reshape(1, p.O, 1, 1)


def _layout_strides(x: Any) -> list[int]:
    """Element strides for the descriptor: canonical NCHW or NHWC (size-1 dims included)."""
    N, C, H, W = x.shape
    if x.flags.c_contiguous:
        return [C * H * W, H * W, W, 1]
    return [H * W * C, 1, W * C, C]  # NHWC, as _cudnn_ready guarantees


def _restride(x: Any, strides: list[int]) -> Any:
    """A view of x's memory with these element strides (they differ at most on size-1 dims)."""
    isz = x.dtype.itemsize
    return cupy.ndarray(x.shape, x.dtype, memptr=x.data, strides=tuple(s * isz for s in strides))


def _aligned_contiguous(a: Any) -> Any:
    """a when C-contiguous and 16-byte aligned (cuDNN's vectorized engines need it), else a copy."""
    if a.flags.c_contiguous and a.data.ptr % 16 == 0:
        return a
    return a.copy()  # a fresh allocation: C-contiguous and 256-byte aligned


def _cudnn_ready(x: Any) -> Any:
    """x itself when it is packed NCHW or NHWC and 16-byte aligned, else a C-contiguous copy."""
    if x.data.ptr % 16 == 0 and (x.flags.c_contiguous or x.transpose(0, 2, 3, 1).flags.c_contiguous):
        return x
    return x.copy()
