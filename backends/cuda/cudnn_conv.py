"""conv2d and its gradients through cuDNN's official Python frontend (``nvidia-cudnn-frontend``, module ``cudnn``).

Per key (operation, dtype, shapes, operand layouts, parameters, bias, numeric switches) xdev
builds the candidate graphs and plans once, times them on the call's own operands and keeps
the fastest (``cudnn_tune.py`` holds that logic and the disk cache); the forward pass, grad_x
(dgrad) and grad_w (wgrad) are searched alike. What stays per key is an ``_Exec``
(``cudnn_exec.py``): the graph, the plan index, the tensor uids, the workspace, the execute
form. A call then only makes its output, converts layouts where the chosen variant needs it,
and passes raw device pointers to the frontend's execute-by-index: no graph validation, no DLPack export, no stream re-binding unless the
stream changed. A forward call whose operands are usable as they are finds its state in one
dictionary keyed by shapes and strides (``CudnnConv._hot``): no layout analysis per call.

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
from dataclasses import dataclass, field, replace
from typing import Any

import cupy
import numpy as np

from xdev.contract import F16 as _F16, F32 as _F32
from xdev.contract import env

from . import cudnn_tune as tune
from .cudnn_exec import _Exec, _Failure
from .cudnn_tune import CudnnUnsupported
from .stream import pointer_function

INSTALL_HINT = 'pip install "xdev[cudnn]"'
_CACHE_SIZE = 256  # per-key states kept (forward and gradients together), least recently used dropped

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
class CudnnConv:
    """Per-device state: the cuDNN handle, the per-key execution states, the plan cache."""

    device_id: int
    compute_capability: tuple[int, int] = (0, 0)
    gpu_name: str = "?"
    build_seconds: float = 0.0  # graph building and plan search so far (the benchmark's build time)
    last: _Exec | None = None  # the state the latest forward call ran (the benchmark reports its choice)
    _handle: Any = None
    _stream: int = -1  # the stream the handle is bound to
    _cache: OrderedDict = field(default_factory=OrderedDict)
    # Forward calls whose operands need no copy or analysis: (x shape, x strides, w shape, w strides,
    # dtype, bias strides or None, params, switches) -> (_Exec, x is NHWC, w is NHWC).
    _hot: dict = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _disk: tune.DiskCache | None = None
    _events: tuple[Any, Any] | None = None
    _stream_ptr: Any = None
    _switch_memo: dict = field(default_factory=dict)  # (raw switches, dtype) -> _switches()

    def _switches(self, dtype: Any) -> tuple[bool, bool, bool]:
        """(TF32, Winograd/FFT allowed, autotune) for a call of ``dtype``, as the environment says now.

        TF32 is asked for and the GPU has it (compute capability 8.0+)."""
        raw = env.cuda_switches()
        hit = self._switch_memo.get((raw, dtype))
        if hit is None:
            tf32 = raw[0] and self.compute_capability >= (8, 0)
            hit = (tf32, tune.winograd_fft_allowed(np.dtype(dtype).name, tf32, raw[1]), raw[2])
            if len(self._switch_memo) > 64:
                self._switch_memo.clear()
            self._switch_memo[(raw, dtype)] = hit
        return hit

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

    # -- the forward pass -----------------------------------------------------------------------
    def conv2d(self, x: Any, w: Any, bias: Any | None, p: Any) -> Any:
        """conv(x, w) + bias as a new (N, O, Ho, Wo) array (strides may be channels-last).

        Raises CudnnUnsupported when cuDNN has no plan under xdev's numeric rules.
        """
        mod, why = frontend()
        if mod is None:
            raise CudnnUnsupported(why or "cuDNN unavailable")
        dt = x.dtype
        sw = self._switches(dt)
        hot = self._hot.get((x.shape, x.strides, w.shape, w.strides, dt, None if bias is None else bias.strides, p,
                             sw))
        if hot is not None and (x.data.ptr | w.data.ptr | (0 if bias is None else bias.data.ptr)) % 16 == 0:
            ex, x_nhwc, w_nhwc = hot
            return self._execute(mod, ex, x, x_nhwc, w, w_nhwc, bias)
        if dt == _F16 and bias is not None:
            # Prefer the fused graph (one rounding); if cuDNN has none, compute in float32 and round once.
            try:
                return self._forward(mod, x, w, bias, p, sw)
            except CudnnUnsupported:
                x32, w32, b32 = x.astype(_F32), w.astype(_F32), bias.astype(_F32)
                return self._forward(mod, x32, w32, b32, p, self._switches(_F32)).astype(_F16)
        return self._forward(mod, x, w, bias, p, sw)

    def _forward(self, mod: Any, x: Any, w: Any, bias: Any | None, p: Any, sw: tuple[bool, bool, bool]) -> Any:
        hot_key = (x.shape, x.strides, w.shape, w.strides, x.dtype, None if bias is None else bias.strides, p, sw)
        x0, w0, b0 = x, w, bias
        x, x_nhwc = _cudnn_ready(x)
        w, w_nhwc = _cudnn_ready(w)  # a channels-last (KRSC) weight is taken as it is too
        if bias is not None and not (bias.flags.c_contiguous and bias.data.ptr % 16 == 0):
            bias = bias.copy()
        packed = x is x0 and w is w0 and bias is b0  # usable as they are: no copy was needed
        key = ("fprop", x.dtype.char, x.shape, x_nhwc, w.shape, w_nhwc, p, bias is not None, *sw)
        ex = self._cache.get(key)
        if ex is None:
            spec = tune.ConvSpec(
                dtype=x.dtype.name, xshape=tuple(int(v) for v in x.shape), x_layout="nhwc" if x_nhwc else "nchw",
                wshape=tuple(int(v) for v in w.shape), stride=tuple(p.stride), dilation=tuple(p.dilation),
                pad=tuple(p.pad), out_hw=(p.Ho, p.Wo), has_bias=bias is not None, tf32=sw[0], fast=sw[1],
                w_layout="nhwc" if w_nhwc else "nchw")
            ex = self._prepare(mod, key, spec, sw[2], lambda e, h: e.run(h, x, x_nhwc, w, w_nhwc, bias))
        else:
            self._cache.move_to_end(key)  # least recently used goes first, not first built
        if type(ex) is _Failure:
            raise CudnnUnsupported(ex.message)
        if packed:
            if len(self._hot) >= _CACHE_SIZE:
                self._hot.clear()
            self._hot[hot_key] = (ex, x_nhwc, w_nhwc)
        return self._execute(mod, ex, x, x_nhwc, w, w_nhwc, bias)

    def _execute(self, mod: Any, ex: _Exec, *operands: Any) -> Any:
        """``ex.run(handle, *operands)`` with the handle bound to CuPy's current stream. When the
        execute form raises, the next form that passed pick_form's check runs the call (and later
        ones); when none is left, the failure is remembered for the state's key (then "auto" goes
        straight to another algorithm)."""
        handle = self._handle
        stream = self._stream_ptr()
        # One handle per device: threads on different streams take turns binding it.
        with self._lock:
            if stream != self._stream:
                mod.set_stream(handle=handle, stream=stream)
                self._stream = stream
            try:
                out = ex.run(handle, *operands)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as first:
                try:
                    out = ex.fall_back(handle, operands, first)  # the next execute form that passed its check
                except cupy.cuda.memory.OutOfMemoryError:
                    raise
                except Exception as e:
                    failure = _Failure(f"execution failed: {type(e).__name__}: {e}")
                    for k, v in list(self._cache.items()):
                        if v is ex:
                            self._cache[k] = failure
                    self._hot.clear()
                    raise CudnnUnsupported(failure.message) from e
            if ex.spec.op == "fprop":
                self.last = ex
        return out

    # -- the gradients ------------------------------------------------------------------------------
    def backward(self, gy: Any, x: Any, w: Any, p: Any, need_x: bool, need_w: bool) -> tuple[Any, Any]:
        """(grad_x, grad_w) through cuDNN's dgrad and wgrad graphs; None where not needed.

        float16 that cuDNN cannot run with float accumulation is computed in float32 and rounded
        once. Raises CudnnUnsupported."""
        mod, why = frontend()
        if mod is None:
            raise CudnnUnsupported(why or "cuDNN unavailable")
        pt, pb, pl, pr = p.pad
        if (pt, pl) != (pb, pr):
            return self._backward_symmetric(gy, x, w, p, need_x, need_w)
        out = []
        for op, need, other in (("dgrad", need_x, w), ("wgrad", need_w, x)):
            if not need:
                out.append(None)
                continue
            try:
                out.append(self._gradient(mod, op, gy, other, p))
            except CudnnUnsupported:
                if gy.dtype != _F16:
                    raise
                out.append(self._gradient(mod, op, gy.astype(_F32), other.astype(_F32), p).astype(_F16))
        return out[0], out[1]

    def _backward_symmetric(self, gy: Any, x: Any, w: Any, p: Any, need_x: bool,
                            need_w: bool) -> tuple[Any, Any]:
        """The gradients of a convolution padded asymmetrically ('same' with an even kernel
        extent), computed by graphs that are padded symmetrically.

        On an H200 (cuDNN 9.19) a wgrad engine the autotuner chose for such a convolution
        returned a wrong grad_w (its first kernel row). So the gradient graphs never see
        pre-padding != post-padding: x gets the extra rows/columns as zeros, explicitly, and the
        padding becomes the smaller of the two on each side. The convolution is the same (the
        same padded input, the same output size); grad_w is unchanged by the zeros, and grad_x
        is that of the larger input, cropped back."""
        pt, pb, pl, pr = p.pad
        top, bottom, left, right = max(0, pt - pb), max(0, pb - pt), max(0, pl - pr), max(0, pr - pl)
        H2, W2 = p.H + top + bottom, p.W + left + right
        try:
            sym = replace(p, H=H2, W=W2, pad=(min(pt, pb), min(pt, pb), min(pl, pr), min(pl, pr)))
            xs = None
            if need_w:
                xs = cupy.zeros((p.N, p.C, H2, W2), x.dtype)
                xs[:, :, top:top + p.H, left:left + p.W] = x
            gx, gw = self.backward(gy, xs, w, sym, need_x, need_w)
            if gx is not None:
                gx = cupy.ascontiguousarray(gx[:, :, top:top + p.H, left:left + p.W])
        except (CudnnUnsupported, cupy.cuda.memory.OutOfMemoryError):
            raise
        except Exception as e:
            # Never the asymmetric graphs: "auto" computes these gradients with "gemm" instead.
            raise CudnnUnsupported(f"the symmetrically padded gradient graphs failed ({type(e).__name__}: {e})") from e
        return gx, gw

    def _gradient(self, mod: Any, op: str, gy: Any, other: Any, p: Any) -> Any:
        """grad_x (op "dgrad", other = w) or grad_w ("wgrad", other = x)."""
        gy, gy_nhwc = _cudnn_ready(gy)
        other, o_nhwc = _cudnn_ready(other)
        sw = self._switches(gy.dtype)
        key = (op, gy.dtype.char, gy_nhwc, o_nhwc, p, *sw)
        ex = self._cache.get(key)
        if ex is None:
            spec = tune.ConvSpec(
                dtype=gy.dtype.name, xshape=(p.N, p.C, p.H, p.W), x_layout="nhwc" if gy_nhwc else "nchw",
                wshape=(p.O, p.C // p.groups, p.kh, p.kw), stride=tuple(p.stride), dilation=tuple(p.dilation),
                pad=tuple(p.pad), out_hw=(p.Ho, p.Wo), has_bias=False, tf32=sw[0], fast=sw[1],
                w_layout="nhwc" if o_nhwc else "nchw", op=op)
            ex = self._prepare(mod, key, spec, sw[2], lambda e, h: e.run(h, gy, gy_nhwc, other, o_nhwc))
        else:
            self._cache.move_to_end(key)
        if type(ex) is _Failure:
            raise CudnnUnsupported(ex.message)
        return self._execute(mod, ex, gy, gy_nhwc, other, o_nhwc)

    # -- building and tuning (once per key) ---------------------------------------------------------
    def _prepare(self, mod: Any, key: Any, spec: tune.ConvSpec, autotune: bool,
                 run_once: Any) -> _Exec | _Failure:
        """The state for ``key``: from the disk cache, or the plan search (``run_once(exec, handle)``
        makes one whole call on the call's own operands)."""
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            handle = self._handle_for_device(mod)
            if self._stream_ptr is None:
                self._stream_ptr = pointer_function()
            stream = cupy.cuda.get_current_stream()
            mod.set_stream(handle=handle, stream=stream.ptr)
            self._stream = stream.ptr

            def time_call(g: tune.Graph, index: int) -> float:
                ex = _Exec(g, index, spec, None)
                start, end = self._timing_events()
                start.record(stream)
                run_once(ex, handle)
                end.record(stream)
                end.synchronize()
                return cupy.cuda.get_elapsed_time(start, end) / 1e3

            try:
                g, choice = tune.select(mod, handle, spec, time_call, autotune=autotune,
                                        limit=env.cudnn_autotune_limit(),
                                        disk=self._disk_cache() if autotune else None,
                                        budget_s=env.cudnn_autotune_budget_s())
                ex: _Exec | _Failure = _Exec(g, choice.index, spec, choice)
                ex.pick_form(lambda: run_once(ex, handle), stream.synchronize)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                ex = _Failure(f"{type(e).__name__}: {e}")
            finally:
                self.build_seconds += time.perf_counter() - t0
            self._cache[key] = ex
            while len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
                self._hot.clear()  # it may hold the state just dropped
            return ex

    def _timing_events(self) -> tuple[Any, Any]:
        if self._events is None:
            self._events = (cupy.cuda.Event(), cupy.cuda.Event())
        return self._events


def _cudnn_ready(x: Any) -> tuple[Any, bool]:
    """(x, is_nhwc): x itself when packed NCHW or NHWC and 16-byte aligned, else an NCHW copy.

    The same for a weight (O, C/groups, kH, kW): NHWC means KRSC."""
    if x.data.ptr % 16 == 0:
        if x.flags.c_contiguous:
            return x, False
        if x.transpose(0, 2, 3, 1).flags.c_contiguous:
            return x, True
    return x.copy(), False  # C-contiguous, 256-byte aligned
