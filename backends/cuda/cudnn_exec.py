"""How a chosen cuDNN plan runs: the per-key execution state (``_Exec``) and the frontend's
execute-by-index entry points (the execute forms).

Frontends differ in which forms they have and what each costs; ``_Exec.pick_form`` finds out
once per key which ones run here and compute what the public entry computes (into an output
filled with NaN, ``_same_result``), keeps the cheapest and the others as fallbacks in order,
and ``_Exec.fall_back`` moves to the next when the one in use raises. ``cudnn_conv.py``
builds the graphs and owns the states; ``_Failure`` is what it remembers for a key that has
no state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from xdev.contract import F32 as _F32, F64 as _F64

from . import cudnn_tune as tune


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


def _declared(a: Any, shape: tuple[int, ...] | list[int], elem_strides: list[int]) -> Any:
    """A view of a's memory with exactly these dims and element strides (same elements)."""
    isz = a.dtype.itemsize
    return cupy.ndarray(tuple(shape), a.dtype, memptr=a.data, strides=tuple(v * isz for v in elem_strides))


def _to_nhwc(a: Any) -> Any:
    """A packed channels-last copy of a (N, C, H, W)-indexed array, indexed the same way."""
    return cupy.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
