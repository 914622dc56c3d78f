"""conv2d and its gradients through cuDNN's official Python frontend (``nvidia-cudnn-frontend``, module ``cudnn``).

Per key (operation, dtype, shapes, operand layouts, parameters, bias, numeric switches) xdev
builds the candidate graphs and plans once, times them on the call's own operands and keeps
the fastest (``cudnn_tune.py`` holds that logic and the disk cache); the forward pass, grad_x
(dgrad) and grad_w (wgrad) are searched alike. What stays per key is an ``_Exec``: the graph,
the plan index, the tensor uids, the workspace. A call then only makes its output, converts
layouts where the chosen variant needs it, and passes raw device pointers to the frontend's
execute-by-index: no graph validation, no DLPack export, no stream re-binding unless the
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

from xdev.contract import F16 as _F16, F32 as _F32, F64 as _F64
from xdev.contract import env

from . import cudnn_tune as tune
from .stream import pointer_function
from .cudnn_tune import CudnnUnsupported

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
class _Failure:
    message: str


class _Exec:
    """Per-key execution state: everything a call needs that does not depend on the operands."""

    __slots__ = ("graph", "index", "uids", "decl", "workspace", "ws_ptr", "nhwc", "fused", "bias_after",
                 "out_store", "spec", "choice", "call", "form", "spare", "dropped", "lowered")

    def __init__(self, g: tune.Graph, index: int, spec: tune.ConvSpec, choice: tune.Choice | None) -> None:
        self.graph = g.graph
        self.index = index
        roles = tuple(g.uids)  # operands, then the output (cudnn_tune.declared)
        self.uids = tuple(g.uids[r] for r in roles)
        self.decl = tuple(g.decl[r] for r in roles)
        ws = max(1, g.workspace.get(index, 0))
        self.workspace = cupy.empty(ws, dtype=np.uint8)
        self.ws_ptr = int(self.workspace.data.ptr)
        self.nhwc = g.variant.layout == "nhwc"
        self.fused = g.variant.kind == "fused"
        self.bias_after = spec.op == "fprop" and spec.has_bias and not self.fused
        n, c, h, w = self.decl[-1][0]
        self.out_store = (n, h, w, c) if self.nhwc else (n, c, h, w)  # the output's memory order
        self.spec = spec
        self.choice = choice
        # Until pick_form runs (the plan search's timed calls): the form every frontend has.
        self.form, self.call = _PUBLIC, None
        self.spare: list[str] = []  # forms that passed pick_form's check, next choice first (_Exec.fall_back)
        self.dropped: tuple[str, ...] = ()  # why pick_form dropped the others (this frontend's lacks, failures)
        self.lowered: tuple[Any, ...] | None = None  # (handle, C++ entry, C++ plan index, backend handle)

    # -- the frontend's execute-by-index entry points, cheapest first -----------------------------
    # Frontends differ: up to 1.2x the graph is a pybind class whose _execute_plan_at_index takes
    # {uid: pointer}; 1.3x is a Python class whose execute_plan_at_index has an ordered form
    # (a tuple of buffers + tensor_uids) that stays in C++. Which ones exist, and which is
    # cheapest, is found out once per key (pick_form), never per call. ``arrays`` are the
    # graph's tensors in declared order.
    def _lowered(self, h: Any, arrays: tuple[Any, ...]) -> None:
        # Frontends whose graph is a Python class (1.3x) keep the C++ graph they lower to; their
        # execute_plan_at_index checks, per call, every engine of the plan list against the
        # deselection filters (305 engines on an H200: ~50 us) before calling it. The plan was
        # built and its index checked when it was chosen, so the C++ entry is called directly,
        # with the C++ plan index the frontend itself maps this plan to.
        low = self.lowered
        if low is None or low[0] is not h:
            low = self.lowered = self._lower(h)
        pack = {u: a.data.ptr for u, a in zip(self.uids, arrays)}
        low[1](pack, self.ws_ptr, low[2], low[3])

    def _lower(self, h: Any) -> tuple[Any, ...]:
        """(handle, the lowered graph's _execute_plan_at_index, the plan's C++ index, the backend
        handle); AttributeError/LookupError where this frontend has no such layer, or where its
        public entry would do more for this plan than call that C++ entry (then a public form
        runs instead)."""
        g = self.graph
        if getattr(g, "_planning_done", True) is False:
            raise LookupError("the graph's plan list is the C++ one (a deserialized graph)")
        if getattr(g, "_data_bindings", None):
            raise LookupError("the graph binds tensors of its own, which only its public entry adds to a call")
        cfg = g._materialize_backend_plan(self.index)
        engine_for = getattr(g, "_engine_for", None)
        if engine_for is not None and engine_for(cfg) is not None:
            raise LookupError("the plan is a Python engine's, which only the public entry dispatches")
        barred = getattr(g, "_barred_indices", None)
        if barred is not None and self.index in barred():
            raise LookupError(f"plan {self.index} is deselected")
        cpp = getattr(cfg, "cpp_index", None)
        if cpp is None:
            raise LookupError("the plan has no C++ plan index of its own")
        try:
            from cudnn._handle import to_backend_handle  # noqa: PLC0415  (frontends with Handle objects)
        except ImportError:
            backend_handle = h
        else:
            backend_handle = to_backend_handle(h)
        return (h, g._lowered_graph._execute_plan_at_index, int(cpp), backend_handle)

    def _classic(self, h: Any, arrays: tuple[Any, ...]) -> None:
        pack = {u: a.data.ptr for u, a in zip(self.uids, arrays)}
        self.graph._execute_plan_at_index(pack, self.ws_ptr, self.index, h)

    def _ordered(self, h: Any, arrays: tuple[Any, ...]) -> None:
        bufs = tuple([a.data.ptr for a in arrays])
        self.graph.execute_plan_at_index(bufs, self.ws_ptr, self.index, h, tensor_uids=self.uids)

    def _ptr_dict(self, h: Any, arrays: tuple[Any, ...]) -> None:
        pack = {u: a.data.ptr for u, a in zip(self.uids, arrays)}
        self.graph.execute_plan_at_index(pack, self.ws_ptr, self.index, h)

    def _array_dict(self, h: Any, arrays: tuple[Any, ...]) -> None:
        # Arrays are described to the frontend through DLPack: give each exactly the dims and
        # strides its tensor declares (size-1 dimensions may carry any stride in CuPy).
        pack = {u: _declared(a, dims, st) for u, a, (dims, st) in zip(self.uids, arrays, self.decl)}
        self.graph.execute_plan_at_index(pack, self.workspace, self.index, h)

    def run(self, handle: Any, a: Any, a_nhwc: bool, b: Any, b_nhwc: bool, bias: Any | None = None) -> Any:
        """Execute on operands a, b (x and w; or grad_y and w / x) packed NCHW or NHWC (the flags
        say which) and aligned; returns the new output, (N, C, H, W)-indexed, channels-last
        strides when the graph is NHWC. A layout the graph does not declare is converted here,
        inside the call the autotuner timed; a bias the graph does not fuse is added after."""
        if self.nhwc:
            if not a_nhwc:
                a = _to_nhwc(a)
            if not b_nhwc:
                b = _to_nhwc(b)
        else:
            if a_nhwc:
                a = cupy.ascontiguousarray(a)
            if b_nhwc:
                b = cupy.ascontiguousarray(b)
        out = cupy.empty(self.out_store, a.dtype)
        if self.nhwc:
            out = out.transpose(0, 3, 1, 2)  # every array keeps the (N, C, H, W) indexing
        call = self.call
        if call is None:
            call = self.call = getattr(self, self.form)
        call(handle, (a, b, bias, out) if self.fused else (a, b, out))
        if self.bias_after:
            out += bias.reshape(1, -1, 1, 1)
        return out

    def pick_form(self, run_once: Any, synchronize: Any) -> None:
        """Keep the cheapest execute form that works with this frontend and computes what its
        public entry computes; the other forms that do are kept as fallbacks (``spare``).

        ``run_once()`` makes one whole call and returns its output. The reference runs first:
        the public entry with arrays (what the plan search timed), else the first of the other
        forms the frontend had before the lowered one. Every other form runs once into an output
        filled with NaN, and is dropped if it raises or its result differs from the reference
        (``_same_result``): a form that reads the wrong pointers, writes nothing or runs another
        graph is never kept. Then, while one call takes long enough for the GPU to hide the host
        (over 0.2 ms), the forms are kept in the order of ``_FORMS``; otherwise each gets 20
        calls of wall-clock time and the fastest goes first.
        """
        errors: list[str] = []
        ref, ref_name = None, None
        for name in _REFERENCE_FORMS:
            self.form, self.call = name, getattr(self, name)
            try:
                ref = run_once()
                synchronize()
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:  # this frontend lacks the form (AttributeError), or refuses its arguments
                errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            ref_name = name
            break
        if ref_name is None:
            raise RuntimeError("no execute form of this cuDNN frontend ran the plan: " + "; ".join(errors))
        passed: list[str] = []
        times: dict[str, float] = {}
        gpu_bound = False
        for name, _why in _FORMS:
            form = getattr(self, name)
            try:
                if name != ref_name:
                    self.form, self.call = name, _poisoned(form)
                    got = run_once()
                    synchronize()
                    if not _same_result(got, ref):
                        errors.append(f"{name}: its result differs from the {ref_name} form's")
                        continue
                    del got
                self.form, self.call = name, form
                if not gpu_bound:
                    synchronize()
                    t0 = time.perf_counter()
                    run_once()
                    synchronize()
                    one = time.perf_counter() - t0
                    if one > 2e-4:
                        gpu_bound = True  # the host cost is hidden: the order of preference decides
                    else:
                        t0 = time.perf_counter()
                        for _ in range(20):
                            run_once()
                        synchronize()
                        times[name] = (time.perf_counter() - t0) / 20
            except Exception as e:  # out of memory for a second output included: the reference form remains
                errors.append(f"{name}: {type(e).__name__}: {e}")
                continue
            passed.append(name)
        if ref_name not in passed:
            passed.append(ref_name)  # it ran the reference call
        if not gpu_bound:
            passed.sort(key=lambda n: times.get(n, float("inf")))
        self.form, self.call, self.spare = passed[0], getattr(self, passed[0]), passed[1:]
        self.dropped = tuple(errors)

    def fall_back(self, handle: Any, operands: tuple[Any, ...], error: Exception) -> Any:
        """``run`` again with the next form that passed pick_form's check, after the current one
        raised ``error``; the first that runs is kept. Raises RuntimeError naming every failure
        when none is left."""
        errors = [f"{self.form}: {type(error).__name__}: {error}"]
        while self.spare:
            self.form = self.spare.pop(0)
            self.call = getattr(self, self.form)
            try:
                return self.run(handle, *operands)
            except cupy.cuda.memory.OutOfMemoryError:
                raise
            except Exception as e:
                errors.append(f"{self.form}: {type(e).__name__}: {e}")
        raise RuntimeError("; ".join(errors))


def _poisoned(form: Any) -> Any:
    """``form`` with the output (the last array) filled with NaN first: a form that writes
    nothing cannot pass for one that wrote the reference's values left in reused memory."""
    def call(h: Any, arrays: tuple[Any, ...]) -> None:
        arrays[-1].fill(float("nan"))
        form(h, arrays)
    return call


def _same_result(got: Any, ref: Any) -> bool:
    """Whether two execute forms computed the same output: every element within 1% of the
    reference's largest finite magnitude (room for an engine whose summation order varies from
    run to run), NaN where it has NaN, its infinities where it has them."""
    if got.shape != ref.shape:
        return False
    if ref.size == 0:
        return True
    wide = _F64 if ref.dtype == _F64 else _F32  # float16 differences could overflow
    g, r = got.astype(wide, copy=False), ref.astype(wide, copy=False)
    scale = float(cupy.max(cupy.where(cupy.isfinite(r), cupy.abs(r), 0)))
    ok = (cupy.abs(g - r) <= 0.01 * scale) | (g == r) | (cupy.isnan(g) & cupy.isnan(r))
    return bool(cupy.all(ok))


# (method, when it applies), in order of preference.
_FORMS = (
    ("_lowered", "Python graph (frontend 1.3x): its lowered C++ graph's plan at the C++ index, {uid: pointer}"),
    ("_classic", "pybind graph (frontend <= 1.2x): {uid: pointer}"),
    ("_ordered", "Python graph (frontend 1.3x): tuple of pointers + tensor_uids, stays in C++"),
    ("_ptr_dict", "public execute_plan_at_index with {uid: pointer}"),
    ("_array_dict", "public execute_plan_at_index with {uid: array} (DLPack per operand)"),
)
_PUBLIC = "_array_dict"  # every frontend has it; the plan search's timed calls run it
# The forms a reference result may come from (pick_form): the public ones, then the older private
# ones (a GPU ran the conv tests through _ordered and _classic); never the lowered graph's entry.
_REFERENCE_FORMS = (_PUBLIC, "_ptr_dict", "_ordered", "_classic")


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


def _declared(a: Any, shape: tuple[int, ...] | list[int], elem_strides: list[int]) -> Any:
    """A view of a's memory with exactly these dims and element strides (same elements)."""
    isz = a.dtype.itemsize
    return cupy.ndarray(tuple(shape), a.dtype, memptr=a.data, strides=tuple(v * isz for v in elem_strides))


def _to_nhwc(a: Any) -> Any:
    """A packed channels-last copy of a (N, C, H, W)-indexed array, indexed the same way."""
    return cupy.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _cudnn_ready(x: Any) -> tuple[Any, bool]:
    """(x, is_nhwc): x itself when packed NCHW or NHWC and 16-byte aligned, else an NCHW copy.

    The same for a weight (O, C/groups, kH, kW): NHWC means KRSC."""
    if x.data.ptr % 16 == 0:
        if x.flags.c_contiguous:
            return x, False
        if x.transpose(0, 2, 3, 1).flags.c_contiguous:
            return x, True
    return x.copy(), False  # C-contiguous, 256-byte aligned
