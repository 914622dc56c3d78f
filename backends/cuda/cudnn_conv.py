"""conv2d through cuDNN's official Python frontend (``nvidia-cudnn-frontend``, module ``cudnn``).

Per convolution key (dtype, shape, input layout, parameters, bias, switches) xdev builds the
candidate graphs and plans once, times them on the call's own operands and keeps the fastest
(``cudnn_tune.py`` holds that logic and the disk cache). What stays per key is an ``_Exec``:
the graph, the plan index, the tensor uids, the workspace. A call then only makes its output,
converts layouts where the chosen variant needs it, and passes raw device pointers to the
frontend's execute-by-index: no graph validation, no DLPack export, no stream re-binding
unless the stream changed.

Numerics: engines whose notes say they round inputs down (TF32 tensor cores for float32,
DOWN_CONVERT_INPUTS) or reduce in lower precision are deselected unless ``XDEV_CUDA_TF32=1``
(TF32) opts in; Winograd/FFT engines are allowed in the reduced-precision modes (TF32,
float16) and deselected in strict float32 and float64, unless ``XDEV_CUDNN_FAST`` says
``1`` (always) or ``0`` (never) (``cudnn_tune.winograd_fft_allowed``).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

from xdev.contract import F16 as _F16, F32 as _F32
from xdev.contract import env

from . import cudnn_tune as tune
from .cudnn_tune import CudnnUnsupported

INSTALL_HINT = 'pip install "xdev[cudnn]"'
_CACHE_SIZE = 256

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


@dataclass
class _Failure:
    message: str


class _Exec:
    """Per-key execution state: everything a call needs that does not depend on the operands."""

    __slots__ = ("graph", "index", "ux", "uw", "ub", "uy", "uids", "workspace", "ws_ptr", "nhwc", "fused",
                 "bias_after", "yshape", "spec", "choice", "call", "form")

    def __init__(self, g: tune.Graph, index: int, spec: tune.ConvSpec, choice: tune.Choice | None) -> None:
        self.graph = g.graph
        self.index = index
        self.ux, self.uw, self.uy = g.uids["x"], g.uids["w"], g.uids["y"]
        self.ub = g.uids.get("bias")
        ws = max(1, g.workspace.get(index, 0))
        self.workspace = cupy.empty(ws, dtype=np.uint8)
        self.ws_ptr = int(self.workspace.data.ptr)
        self.nhwc = g.variant.layout == "nhwc"
        self.fused = g.variant.kind == "fused"
        self.bias_after = spec.has_bias and not self.fused
        self.uids = (self.ux, self.uw, self.ub, self.uy) if self.fused else (self.ux, self.uw, self.uy)
        n = spec.xshape[0]
        o = spec.wshape[0]
        ho, wo = spec.out_hw
        self.yshape = (n, ho, wo, o) if self.nhwc else (n, o, ho, wo)
        self.spec = spec
        self.choice = choice
        # Until pick_form runs (the plan search's timed calls): the form every frontend has.
        self.form, self.call = "_array_dict", None

    # -- the frontend's execute-by-index entry points, cheapest first -----------------------------
    # Frontends differ: up to 1.2x the graph is a pybind class whose _execute_plan_at_index takes
    # {uid: pointer}; 1.3x is a Python class whose execute_plan_at_index has an ordered form
    # (a tuple of buffers + tensor_uids) that stays in C++. Which ones exist, and which is
    # cheapest, is found out once per key (pick_form), never per call.
    def _pointers(self, xin: Any, win: Any, b: Any, y: Any) -> dict[int, int]:
        pack = {self.ux: xin.data.ptr, self.uw: win.data.ptr, self.uy: y.data.ptr}
        if self.fused:
            pack[self.ub] = b.data.ptr
        return pack

    def _classic(self, h: Any, xin: Any, win: Any, b: Any, y: Any) -> None:
        self.graph._execute_plan_at_index(self._pointers(xin, win, b, y), self.ws_ptr, self.index, h)

    def _ordered(self, h: Any, xin: Any, win: Any, b: Any, y: Any) -> None:
        bufs = (xin.data.ptr, win.data.ptr, b.data.ptr, y.data.ptr) if self.fused else (
            xin.data.ptr, win.data.ptr, y.data.ptr)
        self.graph.execute_plan_at_index(bufs, self.ws_ptr, self.index, h, tensor_uids=self.uids)

    def _ptr_dict(self, h: Any, xin: Any, win: Any, b: Any, y: Any) -> None:
        self.graph.execute_plan_at_index(self._pointers(xin, win, b, y), self.ws_ptr, self.index, h)

    def _array_dict(self, h: Any, xin: Any, win: Any, b: Any, y: Any) -> None:
        # Arrays are described to the frontend through DLPack: give each exactly the dims and
        # strides its tensor declares (size-1 dimensions may carry any stride in CuPy).
        sp, lay = self.spec, "nhwc" if self.nhwc else "nchw"
        n, o, (ho, wo) = sp.xshape[0], sp.wshape[0], sp.out_hw
        pack = {self.ux: _declared(xin, sp.xshape, tune.strides(sp.xshape, lay)),
                self.uw: _declared(win, sp.wshape, tune.strides(sp.wshape, lay)),
                self.uy: _declared(y, (n, o, ho, wo), tune.strides((n, o, ho, wo), lay))}
        if self.fused:
            pack[self.ub] = _declared(b, (1, o, 1, 1), [o, 1, 1, 1])
        self.graph.execute_plan_at_index(pack, self.workspace, self.index, h)

    def run(self, x: Any, x_nhwc: bool, w: Any, w_nhwc: bool, bias: Any | None, handle: Any) -> Any:
        """y = conv(x, w) (+ bias); x and w packed NCHW or NHWC (the flags say which) and aligned.

        A layout the chosen graph does not declare is converted here, inside the call the
        autotuner timed.
        """
        # Every array keeps the (N, C, H, W) / (O, C, kH, kW) indexing; NHWC is in the strides.
        if self.nhwc:
            xin = x if x_nhwc else cupy.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
            win = w if w_nhwc else cupy.ascontiguousarray(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)  # KRSC
            out = cupy.empty(self.yshape, x.dtype).transpose(0, 3, 1, 2)  # channels-last strides
        else:
            xin = cupy.ascontiguousarray(x) if x_nhwc else x
            win = cupy.ascontiguousarray(w) if w_nhwc else w
            out = cupy.empty(self.yshape, x.dtype)
        call = self.call
        if call is None:
            call = self.call = getattr(self, self.form)
        call(handle, xin, win, bias, out)
        if self.bias_after:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def pick_form(self, run_once: Any, synchronize: Any) -> None:
        """Keep the cheapest execute form that works with this frontend.

        ``run_once()`` makes one whole call. A form that raises is skipped; when one call
        takes long enough for the GPU to hide the host (over 0.2 ms) the first that works is
        kept, else each gets 20 calls of wall-clock time.
        """
        best: tuple[float, str] | None = None
        errors = []
        for name, _why in _FORMS:
            self.form, self.call = name, getattr(self, name)
            try:
                synchronize()
                t0 = time.perf_counter()
                run_once()
                synchronize()
                one = time.perf_counter() - t0
                if one > 2e-4:
                    return  # GPU-bound: host cost is hidden; the first form that works
                t0 = time.perf_counter()
                for _ in range(20):
                    run_once()
                synchronize()
                t = (time.perf_counter() - t0) / 20
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:  # this frontend lacks the form (AttributeError), or refuses its arguments
                errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            if best is None or t < best[0]:
                best = (t, name)
        if best is None:
            raise RuntimeError("no execute form of this cuDNN frontend ran the plan: " + "; ".join(errors))
        self.form, self.call = best[1], getattr(self, best[1])


# (method, when it applies), in order of preference.
_FORMS = (
    ("_classic", "pybind graph (frontend <= 1.2x): {uid: pointer}"),
    ("_ordered", "Python graph (frontend 1.3x): tuple of pointers + tensor_uids, stays in C++"),
    ("_ptr_dict", "public execute_plan_at_index with {uid: pointer}"),
    ("_array_dict", "public execute_plan_at_index with {uid: array} (DLPack per operand)"),
)


@dataclass
class CudnnConv:
    """Per-device state: the cuDNN handle, the per-key execution states, the plan cache."""

    device_id: int
    compute_capability: tuple[int, int] = (0, 0)
    gpu_name: str = "?"
    build_seconds: float = 0.0  # graph building and plan search so far (the benchmark's build time)
    last: _Exec | None = None  # the state the latest call ran (the benchmark reports its choice)
    _handle: Any = None
    _stream: int = -1  # the stream the handle is bound to
    _cache: OrderedDict = field(default_factory=OrderedDict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _disk: tune.DiskCache | None = None
    _events: tuple[Any, Any] | None = None

    def _tf32(self) -> bool:
        """TF32 asked for, on a GPU that has it (compute capability 8.0+)."""
        return self.compute_capability >= (8, 0) and env.cuda_tf32()

    def _handle_for_device(self, mod: Any) -> Any:
        if self._handle is None:
            self._handle = mod.create_handle()  # bound to the current device (ours)
        return self._handle

    def _disk_cache(self) -> tune.DiskCache | None:
        if self._disk is None:
            v = versions().get("cudnn")
            if v is None:
                return None
            self._disk = tune.DiskCache(self.gpu_name, str(v))
        return self._disk

    # -- the hot path --------------------------------------------------------------------------
    def conv2d(self, x: Any, w: Any, bias: Any | None, p: Any) -> Any:
        """conv(x, w) + bias as a new (N, O, Ho, Wo) array (strides may be channels-last).

        Raises CudnnUnsupported when cuDNN has no plan under xdev's numeric rules.
        """
        mod, why = frontend()
        if mod is None:
            raise CudnnUnsupported(why or "cuDNN unavailable")
        if x.dtype == _F16 and bias is not None:
            # Prefer the fused graph (one rounding); if cuDNN has none, compute in float32 and round once.
            try:
                return self._run(mod, x, w, bias, p)
            except CudnnUnsupported:
                return self._run(mod, x.astype(_F32), w.astype(_F32), bias.astype(_F32), p).astype(_F16)
        return self._run(mod, x, w, bias, p)

    def _run(self, mod: Any, x: Any, w: Any, bias: Any | None, p: Any) -> Any:
        x, x_nhwc = _cudnn_ready(x)
        w, w_nhwc = _cudnn_ready(w)  # a channels-last (KRSC) weight is taken as it is too
        if bias is not None and not (bias.flags.c_contiguous and bias.data.ptr % 16 == 0):
            bias = bias.copy()
        tf32 = self._tf32()
        key = (x.dtype.char, x.shape, x_nhwc, w.shape, w_nhwc, p, bias is not None, tf32,
               tune.winograd_fft_allowed(x.dtype.name, tf32, env.cudnn_fast()), env.cudnn_autotune())
        ex = self._cache.get(key)
        if ex is None:
            ex = self._prepare(mod, key, x, x_nhwc, w, w_nhwc, bias, p)
        else:
            self._cache.move_to_end(key)  # least recently used goes first, not first built
        if type(ex) is _Failure:
            raise CudnnUnsupported(ex.message)
        handle = self._handle
        stream = cupy.cuda.get_current_stream().ptr
        # One handle per device: threads on different streams take turns binding it.
        with self._lock:
            if stream != self._stream:
                mod.set_stream(handle=handle, stream=stream)
                self._stream = stream
            try:
                y = ex.run(x, x_nhwc, w, w_nhwc, bias, handle)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                # Remember it: "auto" then goes straight to gemm for this geometry.
                self._cache[key] = _Failure(f"execution failed: {type(e).__name__}: {e}")
                raise CudnnUnsupported(self._cache[key].message) from e
            self.last = ex
        return y

    # -- building and tuning (once per key) ---------------------------------------------------------
    def _prepare(self, mod, key, x, x_nhwc, w, w_nhwc, bias, p) -> _Exec | _Failure:
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            handle = self._handle_for_device(mod)
            spec = tune.ConvSpec(
                dtype=x.dtype.name, xshape=tuple(int(v) for v in x.shape), x_layout="nhwc" if x_nhwc else "nchw",
                wshape=tuple(int(v) for v in w.shape), stride=tuple(p.stride), dilation=tuple(p.dilation),
                pad=tuple(p.pad), out_hw=(p.Ho, p.Wo), has_bias=bias is not None, tf32=key[7], fast=key[8],
                w_layout="nhwc" if w_nhwc else "nchw",
            )
            stream = cupy.cuda.get_current_stream()
            mod.set_stream(handle=handle, stream=stream.ptr)
            self._stream = stream.ptr

            def time_call(g: tune.Graph, index: int) -> float:
                ex = _Exec(g, index, spec, None)
                start, end = self._timing_events()
                start.record(stream)
                ex.run(x, x_nhwc, w, w_nhwc, bias, handle)
                end.record(stream)
                end.synchronize()
                return cupy.cuda.get_elapsed_time(start, end) / 1e3

            try:
                g, choice = tune.select(mod, handle, spec, time_call, autotune=key[9], limit=env.cudnn_autotune_limit(),
                                        disk=self._disk_cache() if key[9] else None,
                                        budget_s=env.cudnn_autotune_budget_s())
                ex: _Exec | _Failure = _Exec(g, choice.index, spec, choice)
                ex.pick_form(lambda: ex.run(x, x_nhwc, w, w_nhwc, bias, handle), stream.synchronize)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                ex = _Failure(f"{type(e).__name__}: {e}")
            finally:
                self.build_seconds += time.perf_counter() - t0
            self._cache[key] = ex
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return ex

    def _timing_events(self) -> tuple[Any, Any]:
        if self._events is None:
            self._events = (cupy.cuda.Event(), cupy.cuda.Event())
        return self._events


def _declared(a: Any, shape: tuple[int, ...], elem_strides: list[int]) -> Any:
    """A view of a's memory with exactly these dims and element strides (same elements)."""
    isz = a.dtype.itemsize
    return cupy.ndarray(tuple(shape), a.dtype, memptr=a.data, strides=tuple(v * isz for v in elem_strides))


def _cudnn_ready(x: Any) -> tuple[Any, bool]:
    """(x, is_nhwc): x itself when packed NCHW or NHWC and 16-byte aligned, else an NCHW copy.

    The same for a weight (O, C/groups, kH, kW): NHWC means KRSC."""
    if x.data.ptr % 16 == 0:
        if x.flags.c_contiguous:
            return x, False
        if x.transpose(0, 2, 3, 1).flags.c_contiguous:
            return x, True
    return x.copy(), False  # C-contiguous, 256-byte aligned
