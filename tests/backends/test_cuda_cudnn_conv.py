"""backends/cuda/cudnn_conv.py end to end without a GPU, on a fake CuPy (NumPy memory) and a fake cuDNN
frontend that computes the convolution through the pointers it is given; and, on a GPU, the
choice reused by a new process and channels-last operands."""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import xdev
from cuda_fakes import FA, FakeFrontend, FakeGraph, as_fa, raw_view
from cuda_sources import CUDA_DIR
from reference import conv2d_ref
from strategies import values
from tolerance import assert_agrees


def padded(x, kw):
    """x zero-padded as the graph's pre_padding and post_padding say (they may differ)."""
    (pt, pl), (pb, pr) = kw["pre_padding"], kw["post_padding"]
    return np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))


class ComputingGraph(FakeGraph):
    """Executes a plan by computing the convolution through the pointers and strides it was given."""

    def _conv(self, pack, index):
        assert index in self.built, "executing a plan that was never built"
        self.fe.last_seconds = self.configs[index][2]
        dt = {"half": np.float16, "float": np.float32, "double": np.float64}[self.kw["io_data_type"]]
        by_uid = {t.uid: t for t in self.tensors}
        X, W, Y = by_uid[self.uid_of("X")], by_uid[self.uid_of("W")], self.tensors[-1]
        x = raw_view(pack[X.uid], X.dim, X.stride, dt)
        w = raw_view(pack[W.uid], W.dim, W.stride, dt)
        b = None
        if "bias" in self.ops:
            B = by_uid[self.uid_of("B")]
            b = raw_view(pack[B.uid], B.dim, B.stride, dt).reshape(-1)
        kw = self.conv_kw
        ref, _ = conv2d_ref(padded(x, kw), w, b, stride=tuple(kw["stride"]), padding=0, dilation=tuple(kw["dilation"]))
        y = raw_view(pack[Y.uid], Y.dim, Y.stride, dt)
        y[...] = ref.astype(dt)

    def uid_of(self, name):
        return next(t.uid for t in self.tensors if t.name == name)

    def execute_plan_at_index(self, tensor_dict, workspace, index, handle, tensor_uids=None):
        """The public entry: {uid: array or pointer}; the new frontend also takes buffers + tensor_uids."""
        if tensor_uids is not None:
            if self.fe.api not in ("new", "lowered"):
                raise TypeError("execute_plan_at_index() got an unexpected keyword argument 'tensor_uids'")
            tensor_dict = dict(zip(tensor_uids, tensor_dict))
        by_uid = {t.uid: t for t in self.tensors}
        for k, v in tensor_dict.items():  # an array must match its declaration (DLPack is checked)
            if type(v) is not int:
                t = by_uid[k]
                assert tuple(v.shape) == tuple(t.dim), (t.name, v.shape, t.dim)
                assert tuple(s // v.itemsize for s in v.strides) == tuple(t.stride), (t.name, v.strides, t.stride)
        pack = {k: (v if type(v) is int else v.data.ptr) for k, v in tensor_dict.items()}
        self.fe.forms.append("ordered" if tensor_uids is not None else "dict")
        self._compute(pack, index)

    def _execute_plan_at_index(self, pack, ws, index, handle):
        if self.fe.api != "classic":
            raise AttributeError("'pygraph' object has no attribute '_execute_plan_at_index'")
        self.fe.forms.append("classic")
        self._compute(pack, index)

    def _compute(self, pack, index):
        FakeGraph._execute_plan_at_index(self, pack, 0, index, None)
        self._conv(pack, index)

    # The Python graph of frontend 1.3x lowers to a C++ graph whose plan list is its own: plan i
    # of the Python list is C++ plan i + 1000 here, so a wrong index would fail loudly.
    def _materialize_backend_plan(self, index):
        if self.fe.api != "lowered":
            raise AttributeError("'pygraph' object has no attribute '_materialize_backend_plan'")
        assert index in self.built
        return SimpleNamespace(cpp_index=index + 1000)

    @property
    def _lowered_graph(self):
        if self.fe.api != "lowered":
            raise AttributeError("'pygraph' object has no attribute '_lowered_graph'")
        graph = self

        class Lowered:
            def _execute_plan_at_index(self, pack, ws, cpp_index, handle):
                assert all(type(v) is int for v in pack.values()) and handle == 4242
                graph.fe.forms.append("lowered")
                fault = graph.fe.lowered_fault  # how a C++ entry reached past the public one could misbehave
                if fault == "raises":
                    raise RuntimeError("CUDNN_STATUS_BAD_PARAM")
                if fault == "writes nothing":
                    return
                graph._compute(pack, cpp_index - 1000)
                if fault == "wrong values":
                    y = graph.tensors[-1]
                    dt = {"half": np.float16, "float": np.float32, "double": np.float64}[graph.kw["io_data_type"]]
                    raw_view(pack[y.uid], y.dim, y.stride, dt)[...] *= 2

        return Lowered()


class ComputingFrontend(FakeFrontend):
    __version__ = "fake"

    def __init__(self, table, api="classic"):
        super().__init__(table)
        self.streams, self.last_seconds, self.api, self.forms = [], 0.0, api, []
        self.lowered_fault = None

    def pygraph(self, **kw):
        g = ComputingGraph(self, kw)
        self.graphs.append(g)
        return g

    def backend_version(self):
        return 91900

    def create_handle(self):
        return 4242

    def set_stream(self, handle, stream):
        self.streams.append(stream)

    def executions(self):
        return self.log


@pytest.fixture(params=["classic", "new", "lowered"])
def fake_cuda(request, monkeypatch, tmp_path):
    """(cudnn_conv module, fake frontend, fake cupy) with the GPU libraries replaced.

    The frontend generations: "classic" (<= 1.2x, a pybind graph with _execute_plan_at_index),
    "new" (a Python graph whose execute_plan_at_index takes buffers + tensor_uids) and
    "lowered" (1.3x: the Python graph also exposes the C++ graph it lowers to, with its own
    plan indices).
    """
    fe = ComputingFrontend({}, api=request.param)
    state = SimpleNamespace(stream=7)

    class Event:
        def record(self, stream=None):
            pass

        def synchronize(self):
            pass

    class OOM(MemoryError):
        pass

    cp = types.ModuleType("cupy")
    cp.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(FA)
    cp.zeros = lambda shape, dtype=np.float32: np.zeros(shape, dtype).view(FA)
    cp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FA)
    cp.cuda = SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=state.stream, synchronize=lambda: None),
                              Event=Event,
                              get_elapsed_time=lambda s, e: fe.last_seconds * 1e3,
                              memory=SimpleNamespace(OutOfMemoryError=OOM))
    for name in ("abs", "isfinite", "isnan", "where", "max", "all"):  # what the execute-form check computes with
        setattr(cp, name, getattr(np, name))
    cp.state = state
    cp.ndarray = lambda shape, dtype, memptr, strides: raw_view(
        memptr.ptr, shape, [v // np.dtype(dtype).itemsize for v in strides], dtype).view(FA)
    pkg = types.ModuleType("xdev_fake_cuda")
    pkg.__path__ = [str(CUDA_DIR)]
    monkeypatch.setitem(sys.modules, "cupy", cp)
    monkeypatch.setitem(sys.modules, "cudnn", fe)
    monkeypatch.setitem(sys.modules, "xdev_fake_cuda", pkg)
    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    for k in ("XDEV_CUDA_TF32", "XDEV_CUDNN_FAST", "XDEV_CUDNN_AUTOTUNE", "XDEV_CUDNN_AUTOTUNE_LIMIT"):
        monkeypatch.delenv(k, raising=False)
    spec = importlib.util.spec_from_file_location("xdev_fake_cuda.cudnn_conv", CUDA_DIR / "cudnn_conv.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    yield mod, fe, cp
    for name in [n for n in sys.modules if n.startswith("xdev_fake_cuda.")]:
        sys.modules.pop(name, None)  # its modules hold this test's fake cupy


def _params(xs, ws, padding=1):
    from xdev.contract import conv_params

    return conv_params(xs, ws, (ws[0],), 1, padding, 1, 1)


SMALL = {
    ("nchw", "fused"): [("fused_fma", [], 0.005)],
    ("nchw", "conv"): [("implicit_gemm", [], 0.004), ("tc", ["TENSOR_CORE"], 0.001)],
    ("nhwc", "fused"): [("fused_tc_nhwc", ["TENSOR_CORE"], 0.002)],
    ("nhwc", "conv"): [("tc_nhwc", ["TENSOR_CORE"], 0.0005)],
}


def _check(y, x, w, b, dt):
    ref, ref_abs = conv2d_ref(x, w, b, padding=1)
    K = w.shape[1] * w.shape[2] * w.shape[3] + (1 if b is not None else 0)
    acc = np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
    assert y.shape == ref.shape
    assert_agrees(np.asarray(y), ref, ref_abs, K, acc, np.dtype(dt), "fake cuDNN")


def test_cudnn_conv_strict_fp32_with_bias_added_after_the_fastest_plan(fake_cuda):
    mod, fe, cp = fake_cuda
    fe.table = SMALL
    xs, ws = (2, 3, 6, 5), (4, 3, 3, 3)
    x, w, b = values(1, xs, np.float32), values(2, ws, np.float32), values(3, (4,), np.float32)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    y = conv.conv2d(as_fa(x), as_fa(w), as_fa(b), _params(xs, ws))
    _check(y, x, w, b, np.float32)
    assert y.flags.c_contiguous  # NCHW result
    c = conv.last.choice
    assert (c.layout, c.kind, c.name) == ("nchw", "conv", "implicit_gemm")  # bias kernel after the conv
    assert conv.build_seconds > 0
    n_exec = len(fe.executions())
    y2 = conv.conv2d(as_fa(x), as_fa(w), as_fa(b), _params(xs, ws))  # the hot path: no build, one execute
    np.testing.assert_array_equal(y2, y)
    assert len(fe.executions()) == n_exec + 1 and fe.streams == [7]
    # The hot path uses the entry picked once per key among those this frontend has.
    usable = {"classic": {"_classic", "_ptr_dict", "_array_dict"}, "new": {"_ordered", "_ptr_dict", "_array_dict"},
              "lowered": {"_lowered", "_ordered", "_ptr_dict", "_array_dict"}}[fe.api]
    assert conv.last.form in usable
    assert fe.forms[-1] == {"_classic": "classic", "_ordered": "ordered", "_lowered": "lowered"}.get(conv.last.form,
                                                                                                   "dict")
    cp.state.stream = 9  # another stream: the handle is bound again, once
    conv.conv2d(as_fa(x), as_fa(w), as_fa(b), _params(xs, ws))
    conv.conv2d(as_fa(x), as_fa(w), as_fa(b), _params(xs, ws))
    assert fe.streams == [7, 9]


def test_cudnn_conv_float16_channels_last_input_runs_without_a_copy(fake_cuda):
    mod, fe, _cp = fake_cuda
    fe.table = SMALL
    xs, ws = (2, 8, 5, 7), (6, 8, 3, 3)
    x, w, b = values(4, xs, np.float16), values(5, ws, np.float16), values(6, (6,), np.float16)
    xcl = as_fa(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    wcl = as_fa(np.ascontiguousarray(w.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    y = conv.conv2d(xcl, wcl, as_fa(b), _params(xs, ws))
    _check(y, x, w, b, np.float16)
    assert y.shape == (2, 6, 5, 7) and y.transpose(0, 2, 3, 1).flags.c_contiguous  # channels-last strides
    assert (conv.last.choice.layout, conv.last.choice.kind) == ("nhwc", "fused")
    pack = fe.executions()[-1][0]
    assert xcl.data.ptr in pack.values() and wcl.data.ptr in pack.values()  # x and w as given: no copy


def test_cudnn_conv_nchw_input_converted_inside_the_timed_call_when_nhwc_wins(fake_cuda):
    mod, fe, _cp = fake_cuda
    fe.table = SMALL
    xs, ws = (1, 4, 6, 6), (5, 4, 3, 3)
    x, w = values(7, xs, np.float16), values(8, ws, np.float16)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    y = conv.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))
    _check(y, x, w, None, np.float16)
    assert conv.last.choice.layout == "nhwc" and conv.last.spec.x_layout == "nchw"
    timed = [e for e in fe.executions()]
    assert len(timed) >= 1 + 3  # warm-up and timed calls of the candidates, then the call itself


def test_cudnn_conv_choice_survives_a_new_process_through_the_disk_cache(fake_cuda):
    mod, fe, _cp = fake_cuda
    fe.table = SMALL
    xs, ws = (1, 3, 5, 5), (2, 3, 3, 3)
    x, w = values(9, xs, np.float16), values(10, ws, np.float16)  # float16: NCHW and NHWC candidates
    first = mod.CudnnConv(0, (9, 0), "Fake H100")
    first.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))
    assert len(fe.builds) > 1
    builds = len(fe.builds)
    fresh = mod.CudnnConv(0, (9, 0), "Fake H100")  # nothing in memory
    y = fresh.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))
    _check(y, x, w, None, np.float16)
    assert len(fe.builds) == builds + 1  # only the recorded plan is built; nothing else is tried
    assert fresh.last.choice == first.last.choice


def test_cudnn_conv_without_a_plan_raises_unsupported_and_remembers(fake_cuda):
    mod, fe, _cp = fake_cuda
    fe.table = {("nchw", "conv"): [("tc", ["TENSOR_CORE"], 0.001)]}
    xs, ws = (1, 3, 5, 5), (2, 3, 3, 3)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    for _ in range(2):
        with pytest.raises(mod.CudnnUnsupported, match="no cuDNN plan"):
            conv.conv2d(as_fa(values(1, xs, np.float32)), as_fa(values(2, ws, np.float32)), None, _params(xs, ws))
    assert len(fe.graphs) == 1  # the failure is cached: built once


# ==== on a GPU (skipped with the reason elsewhere) ===================================================

@pytest.fixture(scope="module")
def cuda():
    from availability import require

    return require("cuda")


def _run_py(code: str, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    path = [str(Path(__file__).parent.parent)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    full.update(env, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=full,
                          timeout=300)


def test_gpu_cudnn_choice_is_tuned_once_and_reused_by_a_new_process(cuda, tmp_path):
    if "cudnn" not in cuda.conv_algorithms:
        pytest.skip(cuda.unavailable_reason("cudnn"))
    code = """
        import json, numpy as np, xdev
        from strategies import values
        x = values(1, (4, 32, 20, 20), np.float32); w = values(2, (48, 32, 3, 3), np.float32)
        b = values(3, (48,), np.float32)
        y = xdev.conv2d(x, w, b, padding=1, algorithm="cudnn", backend="cuda")
        dev = y._dev
        print(json.dumps(dev.cudnn_choice()))
    """
    env = dict(XDEV_CACHE_DIR=str(tmp_path), XDEV_CUDNN_AUTOTUNE_LIMIT="4")
    first = _run_py(code, **env)
    assert first.returncode == 0, first.stderr
    files = list((tmp_path / "cudnn-plans").glob("*.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    c1 = json.loads(first.stdout.strip().splitlines()[-1])
    assert c1["autotuned"] and c1["candidates"] >= 1 and c1["mode"] == "strict-fp32"
    second = _run_py(code, **env)
    assert second.returncode == 0, second.stderr
    c2 = json.loads(second.stdout.strip().splitlines()[-1])
    assert (c2["plan"], c2["plan_index"], c2["layout"], c2["bias"]) == (c1["plan"], c1["plan_index"], c1["layout"],
                                                                        c1["bias"])
    assert files[0].stat().st_mtime_ns == stamp  # read, not tuned and written again
    off = _run_py(code, XDEV_CUDNN_AUTOTUNE="0", XDEV_CACHE_DIR=str(tmp_path / "off"))
    assert off.returncode == 0 and not json.loads(off.stdout.strip().splitlines()[-1])["autotuned"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_gpu_channels_last_input_and_result(cuda, dtype):
    import cupy

    if "cudnn" not in cuda.conv_algorithms:
        pytest.skip(cuda.unavailable_reason("cudnn"))
    x = values(4, (2, 16, 12, 10), dtype)
    w = values(5, (24, 16, 3, 3), dtype)
    b = values(6, (24,), dtype)
    xd = cupy.ascontiguousarray(cupy.asarray(x).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    xa = xdev.Array._wrap(xd, cuda)
    y = xdev.conv2d(xa, w, b, padding=1, algorithm="cudnn")
    assert y.shape == (2, 24, 12, 10) and y.algorithm == "cudnn"
    ref, ref_abs = conv2d_ref(x, w, b, padding=1)
    acc = np.dtype(np.float32) if dtype == np.float16 else cuda.acc_dtype(np.dtype(dtype))
    assert_agrees(y.numpy(), ref, ref_abs, 16 * 9 + 1, acc, np.dtype(dtype), "channels-last cuDNN")
    assert cuda.cudnn_choice()["input_layout"] == "nhwc"


def test_the_lowered_form_runs_the_chosen_plan_at_its_cpp_index(fake_cuda):
    """Frontend 1.3x: the C++ graph's own entry, the plan mapped to the C++ list's index once."""
    mod, fe, _cp = fake_cuda
    fe.table = SMALL
    xs, ws = (1, 3, 6, 5), (4, 3, 3, 3)
    x, w = values(11, xs, np.float32), values(12, ws, np.float32)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    conv.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))
    ex = conv.last
    y = as_fa(np.full((1, 4, 6, 5), np.nan, np.float32))
    if fe.api != "lowered":
        with pytest.raises(AttributeError):
            ex._lowered(4242, (as_fa(x), as_fa(w), y))
        return
    ex._lowered(4242, (as_fa(x), as_fa(w), y))
    assert fe.forms[-1] == "lowered" and fe.executions()[-1][2] == ex.index  # the plan that was chosen
    _check(y, x, w, None, np.float32)
    assert ex.lowered[2] == ex.index + 1000


# ==== the execute forms: each checked against the public entry, and a fallback when one fails =======

FORMS_OF = {"classic": {"_classic", "_ptr_dict", "_array_dict"}, "new": {"_ordered", "_ptr_dict", "_array_dict"},
            "lowered": {"_lowered", "_ordered", "_ptr_dict", "_array_dict"}}


def _small_conv(mod, fe, seed=11):
    fe.table = SMALL
    xs, ws = (1, 3, 6, 5), (4, 3, 3, 3)
    x, w = values(seed, xs, np.float32), values(seed + 1, ws, np.float32)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    return conv, (lambda: conv.conv2d(as_fa(x), as_fa(w), None, _params(xs, ws))), x, w


def test_every_execute_form_that_computes_what_the_public_entry_computes_is_kept(fake_cuda):
    """The fastest goes first; every other form this frontend has is a checked fallback."""
    mod, fe, _cp = fake_cuda
    conv, call, x, w = _small_conv(mod, fe)
    _check(call(), x, w, None, np.float32)
    ex = conv.last
    assert {ex.form, *ex.spare} == FORMS_OF[fe.api] and len(ex.spare) == len(FORMS_OF[fe.api]) - 1
    # The benchmark's record of the choice says how it is executed, and why the other forms are not.
    choice = importlib.import_module("xdev_fake_cuda.conv").cudnn_choice(SimpleNamespace(cudnn=conv))
    assert (choice["execute"], choice["execute_fallbacks"]) == (ex.form, ex.spare)
    assert len(choice["execute_dropped"]) == 5 - len(FORMS_OF[fe.api])  # the forms this frontend lacks


@pytest.mark.parametrize("fake_cuda", ["lowered"], indirect=True)
@pytest.mark.parametrize("fault", ["raises", "writes nothing", "wrong values"])
def test_a_lowered_entry_that_fails_or_computes_otherwise_is_never_kept(fake_cuda, fault):
    """The C++ entry runs first into a NaN-filled output; what it wrote is compared with the
    public entry's result of the same plan, and the form is dropped unless they agree."""
    mod, fe, _cp = fake_cuda
    fe.lowered_fault = fault
    conv, call, x, w = _small_conv(mod, fe)
    for _ in range(2):
        _check(call(), x, w, None, np.float32)
    ex = conv.last
    assert "lowered" in fe.forms  # it was tried
    assert "_lowered" not in (ex.form, *ex.spare) and {ex.form, *ex.spare} == FORMS_OF["new"]
    assert fe.forms[-1] == ("ordered" if ex.form == "_ordered" else "dict")


@pytest.mark.parametrize("fake_cuda", ["lowered"], indirect=True)
@pytest.mark.parametrize("missing", ["_data_bindings", "_engine_for", "_barred_indices", "_planning_done"])
def test_the_lowered_entry_is_not_used_where_the_public_one_would_do_more(fake_cuda, monkeypatch, missing):
    """Auto-bound tensors, a Python engine's plan, a deselected plan, a plan list owned by C++:
    the public entry handles these, so the C++ entry is skipped and a public form runs."""
    mod, fe, _cp = fake_cuda
    value = {"_data_bindings": {999: 0}, "_engine_for": lambda self, cfg: "a python engine",
             "_barred_indices": lambda self: set(range(100)), "_planning_done": False}[missing]
    monkeypatch.setattr(ComputingGraph, missing, value, raising=False)
    conv, call, x, w = _small_conv(mod, fe)
    _check(call(), x, w, None, np.float32)
    ex = conv.last
    assert "_lowered" not in (ex.form, *ex.spare) and "lowered" not in fe.forms


def test_an_execute_form_that_starts_failing_hands_the_call_to_the_next_checked_form(fake_cuda):
    """A form that raises after it was chosen: the call, and the later ones, run the next form
    that passed the check; with none left, the key fails (then "auto" runs another algorithm)."""
    mod, fe, _cp = fake_cuda
    conv, call, x, w = _small_conv(mod, fe)
    call()
    ex = conv.last
    first, spare = ex.form, list(ex.spare)

    def broken(h, arrays):
        raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED")

    ex.call = broken
    _check(call(), x, w, None, np.float32)
    assert (ex.form, ex.spare) == (spare[0], spare[1:]) and ex.call is not broken and first not in ex.spare
    _check(call(), x, w, None, np.float32)  # stays on the fallback
    ex.call, ex.spare = broken, []
    n = len(fe.executions())
    for _ in range(2):
        with pytest.raises(mod.CudnnUnsupported, match="execution failed.*CUDNN_STATUS_EXECUTION_FAILED"):
            call()
    assert len(fe.executions()) == n  # remembered: the second call does not execute again
