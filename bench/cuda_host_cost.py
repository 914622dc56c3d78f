"""Where the host microseconds of one small CUDA call go, layer by layer.

    python bench/cuda_host_cost.py [--json FILE] [--calls 2000] [--rounds 5]   # on a GPU
    python bench/cuda_host_cost.py --fake [--profile]                          # anywhere

Each row times one layer of the call path on its own, called with the arguments the layer
above would pass: ``calls`` back-to-back calls then one synchronize, wall clock per call,
rows interleaved round by round (median over ``rounds``). The difference between a row and
the next one down is that layer's own cost. Workloads: conv2d 1x3x32x32 * 8x3x3x3 float32
(cudnn, gemm, direct) and a 16x16 float32 matmul, beside ``cupy.matmul`` and torch when
importable.

``--fake`` replaces CuPy, cuBLAS and the cuDNN frontend with modules that do nothing (their
arrays are NumPy's), so what is left is xdev's own Python: the share of the host cost xdev
can remove, measurable on a machine without a GPU. ``--profile`` adds cProfile's top
functions per workload (their times include the profiler's own overhead).
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import statistics
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


# ==== a CuPy, cuBLAS and cuDNN frontend that do nothing =============================================

class _Ptr:
    __slots__ = ("ptr",)

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr


_NULL = _Ptr(0)


class FakeArray(np.ndarray):
    """A NumPy array with CuPy's ``.data.ptr`` (always 0: nothing reads the memory, and an
    address lookup through NumPy would cost more than CuPy's attribute)."""

    @property
    def data(self) -> _Ptr:  # type: ignore[override]
        return _NULL

    def fill(self, value: Any) -> None:
        pass  # the fake GPU writes nothing: execute forms compare outputs that stay as allocated (zeros)

    def set(self, host: np.ndarray) -> None:
        self[...] = host

    def get(self, out: np.ndarray | None = None) -> np.ndarray:
        if out is None:
            return np.asarray(self).copy()
        out[...] = self
        return out


def _fa(a: np.ndarray) -> FakeArray:
    return a.view(FakeArray)


class _Nothing:
    """Any attribute, any call: nothing (plan building and execution of the fake frontend)."""

    def __init__(self, value: Any = None) -> None:
        self._value = value

    def __getattr__(self, name: str) -> Any:
        return self

    def __call__(self, *a: Any, **k: Any) -> Any:
        return self if self._value is None else self._value


class _FakeTensor:
    _uid = 100

    def __init__(self) -> None:
        _FakeTensor._uid += 1
        self.uid = _FakeTensor._uid

    def set_output(self, v: Any) -> "_FakeTensor":
        return self

    set_dim = set_stride = set_data_type = set_output

    def get_uid(self) -> int:
        return self.uid


class _FakeGraph:
    def __init__(self, **kw: Any) -> None:
        pass

    def tensor(self, **kw: Any) -> _FakeTensor:
        return _FakeTensor()

    def conv_fprop(self, **kw: Any) -> _FakeTensor:
        return _FakeTensor()

    conv_dgrad = conv_wgrad = conv_fprop

    def bias(self, **kw: Any) -> _FakeTensor:
        return _FakeTensor()

    def validate(self) -> None:
        pass

    build_operation_graph = check_support = build_plans = validate

    def create_execution_plans(self, modes: Any) -> None:
        pass

    def deselect_numeric_notes(self, notes: Any) -> None:
        pass

    def get_execution_plan_count(self) -> int:
        return 2

    def build_plan_at_index(self, i: int) -> None:
        pass

    def get_plan_name_at_index(self, i: int) -> str:
        return f"fake_engine{i}"

    def get_workspace_size_plan_at_index(self, i: int) -> int:
        return 0

    def get_workspace_size(self) -> int:
        return 0

    def _execute_plan_at_index(self, pack: Any, ws: Any, index: int, handle: Any) -> None:
        pass

    # Frontend 1.3x's layer under its Python graph: the C++ graph and the plan's C++ index.
    def _materialize_backend_plan(self, index: int) -> Any:
        return SimpleNamespace(cpp_index=index)

    @property
    def _lowered_graph(self) -> Any:
        return self

    def execute_plan_at_index(self, pack: Any, ws: Any, index: int, handle: Any, tensor_uids: Any = None) -> None:
        pass

    def execute(self, pack: Any, ws: Any, handle: Any = None) -> None:
        pass


def install_fakes() -> None:
    """Put do-nothing ``cupy``, ``cupyx``, ``cupy_backends...cublas`` and ``cudnn`` into sys.modules."""
    cp = types.ModuleType("cupy")
    cp.__version__ = "fake"
    cp.empty = lambda shape, dtype=np.float32: _fa(np.zeros(shape, dtype))  # calloc: as cheap, and reproducible
    cp.zeros = lambda shape, dtype=np.float32: _fa(np.zeros(shape, dtype))
    cp.ascontiguousarray = lambda a: _fa(np.ascontiguousarray(a))
    cp.concatenate = lambda arrays, axis=0: _fa(np.concatenate(arrays, axis=axis))
    cp.asarray = lambda a: _fa(np.asarray(a))
    cp.asnumpy = lambda a: np.asarray(a).copy()
    cp.matmul = lambda a, b: _fa(np.matmul(a, b))
    cp.abs = lambda a: _fa(np.abs(a))
    cp.max = lambda a: np.max(a)
    cp.where, cp.isfinite, cp.isnan, cp.all = np.where, np.isfinite, np.isnan, np.all
    cp.random = SimpleNamespace(
        uniform=lambda low, high, shape, dtype=np.float32: _fa(np.zeros(shape, dtype)))
    # cupy.ndarray(shape, dtype, memptr=, strides=): a view of existing memory; nothing reads it here.
    cp.ndarray = lambda shape, dtype=np.float32, memptr=None, strides=None: _fa(np.empty(shape, dtype))

    class Err(Exception):
        pass

    class Stream:
        ptr = 0

        def synchronize(self) -> None:
            pass

    stream = Stream()

    class Device:
        def __init__(self, index: int = 0) -> None:
            self.id = index

        def __enter__(self) -> "Device":
            return self

        def __exit__(self, *a: Any) -> None:
            return None

        def synchronize(self) -> None:
            pass

    class Event:
        def record(self, stream: Any = None) -> None:
            pass

        def synchronize(self) -> None:
            pass

    props = {"name": b"Fake GPU (does nothing)", "major": 9, "minor": 0, "multiProcessorCount": 132,
             "clockRate": 1980000, "memoryClockRate": 2619000, "memoryBusWidth": 5120,
             "totalGlobalMem": 80 << 30}
    runtime = SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: dict(props),
                              runtimeGetVersion=lambda: 13000, driverGetVersion=lambda: 13000,
                              CUDARuntimeError=Err, memGetInfo=lambda: (70 << 30, 80 << 30),
                              deviceGetAttribute=lambda code, i: 0)

    class RawModule:
        def __init__(self, code: str = "", options: Any = ()) -> None:
            pass

        def get_function(self, name: str) -> Callable[..., None]:
            return lambda grid, block, args, shared_mem=0: None

    cp.RawModule = RawModule
    cp.cuda = SimpleNamespace(
        Device=Device, Event=Event, Stream=Stream, get_current_stream=lambda: stream, runtime=runtime,
        get_elapsed_time=lambda a, b: 0.01, memory=SimpleNamespace(OutOfMemoryError=Err),
        compiler=SimpleNamespace(CompileException=Err),
        device=SimpleNamespace(get_device_id=lambda: 0))
    cp.get_default_memory_pool = lambda: _Nothing()
    cublas = types.ModuleType("cupy_backends.cuda.libs.cublas")
    for name in ("setMathMode", "setStream", "gemmEx", "gemmStridedBatchedEx", "destroy"):
        setattr(cublas, name, lambda *a: None)
    cublas.create = lambda: 77
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    fe = types.ModuleType("cudnn")
    fe.__version__ = "fake"
    fe.backend_version = lambda: 91900
    fe.create_handle = lambda: 4242
    fe.set_stream = lambda handle, stream: None
    fe.pygraph = _FakeGraph
    fe.data_type = SimpleNamespace(HALF="half", FLOAT="float", DOUBLE="double")
    fe.heur_mode = SimpleNamespace(A="A", FALLBACK="FALLBACK")
    fe.numerical_note = SimpleNamespace()
    for name, m in (("cupy", cp), ("cupyx", types.ModuleType("cupyx")),
                    ("cupy_backends", types.ModuleType("cupy_backends")),
                    ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                    ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", cublas), ("cudnn", fe)):
        sys.modules[name] = m


def cuda_status() -> Any:
    """The cuda backend's BackendStatus, without probing the others (an OpenCL proof takes seconds)."""
    from xdev._registry import load  # noqa: PLC0415
    from xdev.contract import BackendStatus, BackendUnavailable  # noqa: PLC0415

    try:
        return load("cuda").probe()
    except BackendUnavailable as e:
        return BackendStatus(False, str(e), ())


# ==== timing ===========================================================================================

def per_call(fn: Callable[[], Any], sync: Callable[[], None], calls: int) -> float:
    sync()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - t0) / calls


def interleaved(rows: dict[str, Callable[[], Any]], sync: Callable[[], None], calls: int,
                rounds: int) -> dict[str, dict[str, float]]:
    """Median and spread (min-max) of microseconds per call, rows interleaved round by round."""
    for fn in rows.values():
        fn()
    got: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(rounds):
        for k, fn in rows.items():
            got[k].append(per_call(fn, sync, calls) * 1e6)
    return {k: {"us": statistics.median(v), "min": min(v), "max": max(v)} for k, v in got.items()}


def profile(fn: Callable[[], Any], calls: int, top: int = 14) -> str:
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(calls):
        fn()
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("tottime").print_stats(top)
    text = out.getvalue()
    return text[text.find("ncalls"):] if "ncalls" in text else text


# ==== the workloads ===================================================================================

def _layers_conv(xdev: Any, dev: Any, algo: str, x: Any, w: Any) -> dict[str, Callable[[], Any]]:
    """conv2d 1x3x32x32 * 8x3x3x3 at each layer of the call path, outermost first."""
    from xdev.backends.cuda import conv as cconv
    from xdev.backends.cuda.cudnn_exec import _FORMS

    xd, wd = x.data, w.data
    p = xdev._ops._conv_params(tuple(xd.shape), tuple(wd.shape), None, 1, 0, 1, 1)
    rows: dict[str, Callable[[], Any]] = {
        f"{algo}: xdev.conv2d": lambda: xdev.conv2d(x, w, algorithm=algo),
        f"{algo}: Device.conv2d": lambda: dev.conv2d(xd, wd, None, p, algo),
    }

    def in_device(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with dev._cp:
                return fn()
        return call

    rows[f"{algo}: conv.conv2d (device current)"] = in_device(lambda: cconv.conv2d(dev, xd, wd, None, p, algo))
    if algo == "cudnn":
        cd = dev.cudnn
        rows["cudnn: CudnnConv.conv2d"] = in_device(lambda: cd.conv2d(xd, wd, None, p))
        ex = cd.last
        if ex is not None:
            handle = cd._handle
            rows["cudnn: _Exec.run (output + execute)"] = in_device(lambda: ex.run(handle, xd, False, wd, False, None))
            y = ex.run(handle, xd, False, wd, False, None)
            chosen = getattr(ex, "form", None)
            # Every execute form this frontend has (the one the hot path uses is marked; its
            # fallbacks, the other forms that computed what the public entry computes, in ex.spare).
            print(f"  (execute form in use: {chosen}; fallbacks: {getattr(ex, 'spare', None)})")
            for form, _why in _FORMS:
                fn = getattr(ex, form, None)
                if fn is None:
                    continue
                try:
                    with dev._cp:
                        fn(handle, (xd, wd, y))
                        dev.synchronize()
                except Exception as e:  # this frontend lacks the form
                    print(f"  (execute form {form}: {type(e).__name__}: {str(e)[:120]})")
                    continue
                mark = " *" if form == chosen else ""
                rows[f"cudnn: execute alone ({form}){mark}"] = in_device(lambda fn=fn: fn(handle, (xd, wd, y)))
    return rows


def _context_only(dev: Any) -> Callable[[], None]:
    def call() -> None:
        with dev._cp:
            pass
    return call


def run(fake: bool, calls: int, rounds: int, want_profile: bool) -> dict[str, Any]:
    import xdev
    from xdev._registry import get_device

    st = cuda_status()
    if not st.available:
        raise SystemExit(f"cuda unavailable: {st.reason}")
    dev = get_device("cuda")
    xp = dev.xp
    sync = dev.synchronize
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {"fake": fake, "device": dev.name, "python": platform.python_version(),
                           "calls": calls, "rounds": rounds, "workloads": {}}
    torch = None
    if not fake:
        try:
            import torch as _t  # noqa: PLC0415

            torch = _t if _t.cuda.is_available() else None
        except Exception:
            torch = None
    # -- conv2d ------------------------------------------------------------------------------------
    x = xdev.asarray(rng.standard_normal((1, 3, 32, 32)).astype(np.float32), backend="cuda")
    w = xdev.asarray(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), backend="cuda")
    for algo in dev.conv_algorithms:
        xdev.conv2d(x, w, algorithm=algo)  # build, tune, compile: not timed
        rows = _layers_conv(xdev, dev, algo, x, w)
        rows["empty output (xp.empty)"] = lambda: xp.empty((1, 8, 30, 30), np.float32)
        rows["device context (with dev._cp)"] = _context_only(dev)
        if torch is not None:
            tx, tw = torch.as_tensor(x.data, device="cuda"), torch.as_tensor(w.data, device="cuda")
            rows["torch F.conv2d"] = lambda: torch.nn.functional.conv2d(tx, tw)
        res = interleaved(rows, sync, calls, rounds)
        entry: dict[str, Any] = {"rows": res}
        if want_profile:
            entry["profile"] = profile(lambda: xdev.conv2d(x, w, algorithm=algo), calls)
        out["workloads"][f"conv2d-{algo}"] = entry
    # -- the pieces every call pays ------------------------------------------------------------
    pieces: dict[str, Callable[[], Any]] = {
        "cuda.get_current_stream()": lambda: xp.cuda.get_current_stream(),
        "cuda.get_current_stream().ptr": lambda: xp.cuda.get_current_stream().ptr,
        "empty (16, 16) float32": lambda: xp.empty((16, 16), np.float32),
        "device context (with dev._cp)": _context_only(dev),
    }
    if not fake:
        try:
            from cupy_backends.cuda import stream as _bs  # noqa: PLC0415

            pieces["cupy_backends stream.get_current_stream_ptr()"] = _bs.get_current_stream_ptr
        except Exception as e:
            print(f"  (no cupy_backends.cuda.stream.get_current_stream_ptr: {e})")
        pieces["cuda.runtime.getDevice()"] = xp.cuda.runtime.getDevice
        try:
            import cudnn as _fe  # noqa: PLC0415

            h = dev.cudnn._handle
            sp = xp.cuda.get_current_stream().ptr
            if h is not None:
                pieces["cudnn.set_stream (frontend)"] = lambda: _fe.set_stream(handle=h, stream=sp)
        except Exception:
            pass
    from xdev.contract import env as _env

    pieces["env.cuda_tf32() (one variable)"] = _env.cuda_tf32
    out["workloads"]["pieces"] = {"rows": interleaved(pieces, sync, calls, rounds)}
    # -- matmul --------------------------------------------------------------------------------------
    from xdev.backends.cuda import gemm as cgemm

    a = xdev.asarray(rng.standard_normal((16, 16)).astype(np.float32), backend="cuda")
    b = xdev.asarray(rng.standard_normal((16, 16)).astype(np.float32), backend="cuda")
    ad, bd = a.data, b.data
    c = xp.empty((16, 16), np.float32)

    def in_device(fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with dev._cp:
                return fn()
        return call

    rows = {
        "matmul: xdev.matmul": lambda: xdev.matmul(a, b),
        "matmul: Device.matmul": lambda: dev.matmul(ad, bd),
        "matmul: gemm.matmul (device current)": in_device(lambda: cgemm.matmul(dev, ad, bd)),
        "matmul: gemm.gemm_into (given output)": in_device(lambda: cgemm.gemm_into(dev, ad, bd, c)),
        "empty output (xp.empty)": lambda: xp.empty((16, 16), np.float32),
    }
    if not fake:
        import cupy  # noqa: PLC0415

        rows["cupy.matmul"] = lambda: cupy.matmul(ad, bd)
        from xdev.backends.cuda import cublas as _cb  # noqa: PLC0415

        lib, h = _cb.lib(), _cb.handle(dev)
        one, zero = _cb.SCALARS[np.dtype(np.float32)]
        pa, pb, pc = ad.data.ptr, bd.data.ptr, c.data.ptr
        rows["cublas gemmEx binding alone"] = lambda: lib.gemmEx(h, 0, 0, 16, 16, 16, one, pb, 0, 16, pa, 0, 16, zero,
                                                                  pc, 0, 16, _cb.COMPUTE_32F, _cb.GEMM_DEFAULT)
    if torch is not None:
        ta, tb = torch.as_tensor(ad, device="cuda"), torch.as_tensor(bd, device="cuda")
        rows["torch.matmul"] = lambda: torch.matmul(ta, tb)
    entry = {"rows": interleaved(rows, sync, calls, rounds)}
    if want_profile:
        entry["profile"] = profile(lambda: xdev.matmul(a, b), calls)
    out["workloads"]["matmul-16"] = entry
    return out


def print_table(res: dict[str, Any]) -> None:
    print(f"host cost per call, {'FAKE CuPy/cuDNN (xdev Python only)' if res['fake'] else res['device']}, "
          f"{res['calls']} calls x {res['rounds']} interleaved rounds (median [min-max] us)")
    for name, entry in res["workloads"].items():
        print(f"--- {name}")
        for row, v in entry["rows"].items():
            print(f"  {row:44s} {v['us']:8.2f}  [{v['min']:.2f}-{v['max']:.2f}]")
        if "profile" in entry:
            print(entry["profile"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fake", action="store_true", help="do-nothing CuPy/cuBLAS/cuDNN: xdev's Python alone")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile's top functions per workload")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args(argv)
    if a.fake:
        install_fakes()
        os.environ.setdefault("XDEV_CACHE_DIR", str(Path("/tmp") / f"xdev-host-cost-{os.getpid()}"))
    res = run(a.fake, a.calls, a.rounds, a.profile)
    print_table(res)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
        print("wrote", a.json)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
