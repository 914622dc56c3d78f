"""CUDA backend logic that needs no GPU: cuDNN plan autotuning and its disk cache (against a fake
cuDNN frontend with fake timings), the channels-last layout choices, and the cuBLAS GEMM plan
(checked against NumPy through an emulation of cublasGemmStridedBatchedEx's column-major call).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import xdev
from cuda_sources import CUDA_DIR, load


tune = load("cudnn_tune")
gemm = load("gemm_plan")

NOTES = ["TENSOR_CORE", "DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION", "FFT", "NONDETERMINISTIC",
         "WINOGRAD", "WINOGRAD_TILE_4x4", "WINOGRAD_TILE_6x6", "WINOGRAD_TILE_13x13"]


# ==== a fake cuDNN frontend ========================================================================

class FakeTensor:
    def __init__(self, graph, name, dim=None, stride=None):
        self.graph, self.name, self.dim, self.stride = graph, name, dim, stride
        self.uid = len(graph.tensors) + 100
        graph.tensors.append(self)

    def set_output(self, v):
        return self

    def set_dim(self, d):
        self.dim = d
        return self

    def set_stride(self, s):
        self.stride = s
        return self

    def set_data_type(self, d):
        return self

    def get_uid(self):
        return self.uid


class FakeGraph:
    """Records what xdev asks for; engine configs come from FakeFrontend.engines(graph)."""

    def __init__(self, fe, kw):
        self.fe, self.kw, self.tensors, self.ops = fe, kw, [], []
        self.configs, self.barred, self.built = [], set(), []
        self.executed = []

    def tensor(self, name, dim, stride, data_type):
        return FakeTensor(self, name, dim, stride)

    def conv_fprop(self, image, weight, **kw):
        self.ops.append("conv")
        self.conv_kw = kw
        return FakeTensor(self, "Y")

    def bias(self, name, input, bias):
        self.ops.append("bias")
        return FakeTensor(self, "YB")

    def validate(self):
        pass

    def build_operation_graph(self):
        pass

    def create_execution_plans(self, modes):
        assert modes == ["A", "FALLBACK"]
        self.configs = list(self.fe.engines(self))

    def deselect_numeric_notes(self, notes):
        for i, (_name, n, *_rest) in enumerate(self.configs):
            if set(n) & set(notes):
                self.barred.add(i)

    def get_execution_plan_count(self):
        return len(self.configs)

    def build_plan_at_index(self, i):
        if i in self.barred:
            raise RuntimeError("Deselecting execution plan")
        if self.configs[i][0].startswith("broken"):
            raise RuntimeError("CUDNN_STATUS_NOT_SUPPORTED")
        self.built.append(i)
        self.fe.builds.append((self.layout, self.kind, self.configs[i][0]))

    def get_plan_name_at_index(self, i):
        return self.configs[i][0]

    def get_workspace_size_plan_at_index(self, i):
        return 1000 + i

    def _execute_plan_at_index(self, pack, ws, index, handle):
        self.executed.append((dict(pack), ws, index))
        self.fe.log.append((dict(pack), ws, index))

    @property
    def layout(self):
        x = self.tensors[0]
        return "nhwc" if x.stride[1] == 1 and x.dim[1] != 1 else "nchw"

    @property
    def kind(self):
        return "fused" if "bias" in self.ops else "conv"


class FakeFrontend:
    data_type = SimpleNamespace(HALF="half", FLOAT="float", DOUBLE="double")
    heur_mode = SimpleNamespace(A="A", FALLBACK="FALLBACK")
    numerical_note = SimpleNamespace(**{n: n for n in NOTES})

    def __init__(self, table):
        """table: {(layout, kind): [(engine name, notes, seconds per call), ...]} in heuristic order."""
        self.table, self.builds, self.graphs, self.log = table, [], [], []  # log: executions in order

    def pygraph(self, **kw):
        g = FakeGraph(self, kw)
        self.graphs.append(g)
        return g

    def engines(self, g):
        return self.table.get((g.layout, g.kind), [])


def spec(dtype="float32", bias=True, tf32=False, fast=False, x_layout="nchw"):
    return tune.ConvSpec(dtype=dtype, xshape=(16, 64, 56, 56), x_layout=x_layout, wshape=(64, 64, 3, 3),
                         stride=(1, 1), dilation=(1, 1), pad=(1, 1, 1, 1), out_hw=(56, 56), has_bias=bias,
                         tf32=tf32, fast=fast)


def timer(fe, log=None):
    """time_call for select(): the fake engine's seconds (the 'conv' kind pays a bias kernel)."""
    def time_call(g, index):
        name, _notes, secs = fe.engines(g.graph)[index]
        if log is not None:
            log.append((g.variant.layout, g.variant.kind, name))
        return secs + (0.0002 if g.variant.kind == "conv" and g.graph is not None else 0.0)
    return time_call


def no_timing(g, index):
    raise AssertionError("a cached choice must not be timed again")


VGG_TABLE = {
    # Fused conv + bias: tensor-core fusion engines and one FMA engine, no Winograd (as in cuDNN).
    ("nchw", "fused"): [("fused_tc", ["TENSOR_CORE"], 0.001), ("fused_fma", [], 0.0050)],
    ("nchw", "conv"): [("wino", ["WINOGRAD", "WINOGRAD_TILE_4x4"], 0.0030), ("implicit_gemm", [], 0.0040),
                       ("fft", ["FFT"], 0.0035), ("tc_gemm", ["TENSOR_CORE", "DOWN_CONVERT_INPUTS"], 0.0008)],
    ("nhwc", "fused"): [("fused_tc_nhwc", ["TENSOR_CORE"], 0.0006)],
    ("nhwc", "conv"): [("tc_nhwc", ["TENSOR_CORE"], 0.0005), ("fma_nhwc", [], 0.0060)],
}


# ==== variants, numeric rules, layouts ============================================================

def test_variants_by_numeric_mode_and_input_layout():
    V = tune.Variant
    assert tune.variants(spec()) == [V("nchw", "fused"), V("nchw", "conv")]
    assert tune.variants(spec(bias=False)) == [V("nchw", "conv")]
    # Tensor cores (float16, TF32): NHWC too; float16 never adds the bias separately (it would round twice).
    assert tune.variants(spec(dtype="float16")) == [V("nchw", "fused"), V("nhwc", "fused")]
    assert tune.variants(spec(tf32=True, bias=False)) == [V("nchw", "conv"), V("nhwc", "conv")]
    # Channels-last input: its own layout first (no conversion).
    assert tune.variants(spec(x_layout="nhwc", bias=False))[0] == V("nhwc", "conv")
    assert {v.layout for v in tune.variants(spec(x_layout="nhwc", bias=False))} == {"nchw", "nhwc"}


def test_deselected_notes_follow_the_numeric_rules():
    strict = tune.deselected_notes(spec())
    assert {"TENSOR_CORE", "DOWN_CONVERT_INPUTS", "REDUCED_PRECISION_REDUCTION", "WINOGRAD", "FFT"} <= set(strict)
    tf32 = tune.deselected_notes(spec(tf32=True))
    assert "TENSOR_CORE" not in tf32 and "DOWN_CONVERT_INPUTS" not in tf32 and "WINOGRAD" in tf32
    fast = tune.deselected_notes(spec(fast=True))
    assert not any(n.startswith("WINOGRAD") or n == "FFT" for n in fast) and "TENSOR_CORE" in fast
    half = tune.deselected_notes(spec(dtype="float16"))
    assert "TENSOR_CORE" not in half and "DOWN_CONVERT_INPUTS" in half
    assert spec().mode == "strict-fp32" and spec(tf32=True).mode == "tf32" and spec(dtype="float16").mode == "fp16"


def test_nhwc_graph_declares_channels_last_strides_for_x_w_and_y():
    fe = FakeFrontend(VGG_TABLE)
    g, tensors = tune.build_graph(fe, None, spec(dtype="float16", bias=False), tune.Variant("nhwc", "conv"))
    c, h, w = 64, 56, 56
    assert tensors["x"].stride == [h * w * c, 1, w * c, c]
    assert tensors["w"].stride == [3 * 3 * 64, 1, 3 * 64, 64]  # KRSC
    assert tensors["y"].dim == [16, 64, 56, 56] and tensors["y"].stride == [56 * 56 * 64, 1, 56 * 64, 64]
    g2, t2 = tune.build_graph(fe, None, spec(bias=False), tune.Variant("nchw", "conv"))
    assert t2["x"].stride == [c * h * w, h * w, w, 1] and t2["y"].stride == [64 * 56 * 56, 56 * 56, 56, 1]
    assert g.conv_kw["pre_padding"] == [1, 1] and g.conv_kw["post_padding"] == [1, 1]


# ==== autotuning ==================================================================================

def test_strict_fp32_times_only_allowed_plans_and_keeps_the_fastest(tmp_path):
    fe = FakeFrontend(VGG_TABLE)
    log = []
    disk = tune.DiskCache("NVIDIA H100 80GB HBM3", "9.19.0", tmp_path)
    g, choice = tune.select(fe, None, spec(), timer(fe, log), autotune=True, limit=8, disk=disk)
    timed = {name for _l, _k, name in log}
    assert timed == {"fused_fma", "implicit_gemm"}  # no tensor cores, Winograd or FFT in strict float32
    assert (choice.layout, choice.kind, choice.name) == ("nchw", "conv", "implicit_gemm")  # 4.2 ms < 5.0 ms
    assert choice.candidates == 2 and g.plans[0][1] in timed
    assert abs(choice.seconds - 0.0042) < 1e-9


def test_fast_switch_reaches_winograd_of_the_conv_only_graph(tmp_path):
    """The fix for XDEV_CUDNN_FAST=1 changing nothing: with a bias, the conv-only graph is tried too."""
    fe = FakeFrontend(VGG_TABLE)
    log = []
    g, choice = tune.select(fe, None, spec(fast=True), timer(fe, log), autotune=True, limit=8, disk=None)
    assert {name for _l, _k, name in log} == {"fused_fma", "wino", "implicit_gemm", "fft"}
    assert choice.name == "wino" and choice.kind == "conv"


def test_tensor_core_modes_choose_between_nchw_and_nhwc():
    fe = FakeFrontend(VGG_TABLE)
    log = []
    _g, choice = tune.select(fe, None, spec(dtype="float16"), timer(fe, log), autotune=True, limit=8, disk=None)
    assert {(lay, k) for lay, k, _n in log} == {("nchw", "fused"), ("nhwc", "fused")}
    assert (choice.layout, choice.name) == ("nhwc", "fused_tc_nhwc")
    _g, choice = tune.select(fe, None, spec(tf32=True, bias=False), timer(fe), autotune=True, limit=8, disk=None)
    assert (choice.layout, choice.name) == ("nhwc", "tc_nhwc")


def test_candidate_count_is_bounded_per_variant():
    table = {("nchw", "conv"): [("broken0", [], 1.0)] + [(f"e{i}", [], 0.01 - i * 1e-4) for i in range(30)]}
    fe = FakeFrontend(table)
    log = []
    _g, choice = tune.select(fe, None, spec(bias=False), timer(fe, log), autotune=True, limit=5, disk=None)
    assert {n for *_x, n in log} == {"e0", "e1", "e2", "e3", "e4"}  # heuristic order, the broken one skipped
    assert choice.name == "e4"
    assert len(fe.builds) == 5  # plans beyond the limit are not even built


def test_plan_building_stops_at_the_time_budget(monkeypatch):
    table = {("nchw", "conv"): [(f"e{i}", [], 0.01) for i in range(6)],
             ("nchw", "fused"): [(f"f{i}", [], 0.01) for i in range(6)]}
    fe = FakeFrontend(table)
    clock = iter(range(0, 1000, 10))  # every plan build "takes" 10 s
    monkeypatch.setattr(tune.time, "monotonic", lambda: float(next(clock)))
    _g, _c = tune.select(fe, None, spec(), timer(fe), autotune=True, limit=8, disk=None, budget_s=15)
    assert [n for *_lk, n in fe.builds] == ["f0", "f1", "e0"]  # past the budget: one plan per variant
    from xdev.contract import env

    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE_BUDGET_S", "0")
    with pytest.warns(RuntimeWarning, match="XDEV_CUDNN_AUTOTUNE_BUDGET_S"):
        assert env.cudnn_autotune_budget_s() == env.DEFAULT_CUDNN_AUTOTUNE_BUDGET_S == 3.0
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE_BUDGET_S", "0.5")
    assert env.cudnn_autotune_budget_s() == 0.5


def test_autotune_off_runs_the_heuristic_first_plan_untimed(tmp_path):
    fe = FakeFrontend(VGG_TABLE)
    disk = tune.DiskCache("gpu", "9.19.0", tmp_path)
    g, choice = tune.select(fe, None, spec(), no_timing, autotune=False, limit=8, disk=disk)
    assert (choice.kind, choice.name, choice.candidates) == ("fused", "fused_fma", 0)
    assert not disk.path.exists()


def test_no_plan_anywhere_is_a_lookup_error():
    fe = FakeFrontend({("nchw", "conv"): [("tc", ["TENSOR_CORE"], 0.001)]})
    with pytest.raises(LookupError, match="no cuDNN plan"):
        tune.select(fe, None, spec(bias=False), timer(fe), autotune=True, limit=8, disk=None)


def test_choose_skips_failing_candidates_and_stops_timing_slow_ones():
    calls = {"a": 0, "b": 0, "c": 0}
    secs = {"a": 1.0, "b": 10.0, "c": 0.5}

    def once(c):
        calls[c] += 1
        if c == "bad":
            raise RuntimeError("CUDNN_STATUS_EXECUTION_FAILED")
        return secs[c]

    best, t, n = tune.choose(["a", "bad", "b", "c"], once, repeats=3)
    assert (best, t, n) == ("c", 0.5, 3)
    assert calls == {"a": 4, "b": 2, "c": 4}  # b: warm-up + one call, 10x the best so far
    assert tune.choose(["bad"], once) is None


def test_switches_from_the_environment(monkeypatch):
    from xdev.contract import env

    monkeypatch.delenv("XDEV_CUDNN_AUTOTUNE", raising=False)
    monkeypatch.delenv("XDEV_CUDNN_AUTOTUNE_LIMIT", raising=False)
    assert env.cudnn_autotune() and env.cudnn_autotune_limit() == env.DEFAULT_CUDNN_AUTOTUNE_LIMIT == 8
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE", "0")
    assert not env.cudnn_autotune()
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE_LIMIT", "3")
    assert env.cudnn_autotune_limit() == 3
    monkeypatch.setenv("XDEV_CUDNN_AUTOTUNE_LIMIT", "many")
    with pytest.warns(RuntimeWarning, match="XDEV_CUDNN_AUTOTUNE_LIMIT"):
        assert env.cudnn_autotune_limit() == 8
    monkeypatch.setenv("XDEV_CACHE_DIR", "/some/where")
    assert tune.cache_dir() == Path("/some/where/cudnn-plans")


# ==== the disk cache ==============================================================================

def test_a_new_process_reuses_the_choice_without_timing(tmp_path):
    fe = FakeFrontend(VGG_TABLE)
    s = spec(fast=True)
    _g, first = tune.select(fe, None, s, timer(fe), autotune=True, limit=8,
                            disk=tune.DiskCache("NVIDIA H100", "9.19.0", tmp_path))
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert (doc["xdev"], doc["version"]) == ("cudnn-plans", tune.CACHE_VERSION)
    doc = doc["data"]
    assert doc["gpu"] == "NVIDIA H100" and doc["cudnn"] == "9.19.0" and s.text() in doc["entries"]
    assert [p.name for p in tmp_path.iterdir()] == [next(tmp_path.glob("*.json")).name]  # no temporary file
    fe2 = FakeFrontend(VGG_TABLE)  # a fresh process: nothing in memory
    g, again = tune.select(fe2, None, s, no_timing, autotune=True, limit=8,
                           disk=tune.DiskCache("NVIDIA H100", "9.19.0", tmp_path))
    assert again == first and g.plans == [(first.index, first.name)]
    assert len(fe2.builds) == 1  # only the chosen plan is built
    # Another GPU or cuDNN version has its own file: tuned again.
    log = []
    tune.select(FakeFrontend(VGG_TABLE), None, s, timer(fe, log), autotune=True, limit=8,
                disk=tune.DiskCache("NVIDIA A100", "9.19.0", tmp_path))
    assert log


def test_a_stale_choice_is_tuned_again(tmp_path):
    fe = FakeFrontend(VGG_TABLE)
    s = spec()
    disk = tune.DiskCache("gpu", "9", tmp_path)
    disk.put(s.text(), tune.Choice("nchw", "conv", 1, "renamed_engine", 0.001, 3))
    log = []
    _g, choice = tune.select(fe, None, s, timer(fe, log), autotune=True, limit=8,
                             disk=tune.DiskCache("gpu", "9", tmp_path))
    assert log and choice.name == "implicit_gemm"
    assert tune.DiskCache("gpu", "9", tmp_path).get(s.text()).name == "implicit_gemm"


@pytest.mark.parametrize("content", ["{not json", json.dumps({"format": 99, "gpu": "gpu", "cudnn": "9", "entries": {}}),
                                     json.dumps({"format": 1, "gpu": "other", "cudnn": "9", "entries": {}}),
                                     json.dumps([1, 2])],
                         ids=["garbage", "format", "other-gpu", "not-an-object"])
def test_a_corrupt_cache_file_warns_and_is_ignored_then_rewritten(tmp_path, content):
    disk = tune.DiskCache("gpu", "9", tmp_path)
    disk.path.parent.mkdir(parents=True, exist_ok=True)
    disk.path.write_text(content)
    fe = FakeFrontend(VGG_TABLE)
    with pytest.warns(RuntimeWarning, match=r"ignoring .* in the cuDNN plan cache .*tuned again"):
        _g, choice = tune.select(fe, None, spec(), timer(fe), autotune=True, limit=8, disk=disk)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tune.DiskCache("gpu", "9", tmp_path).get(spec().text()) == choice


def test_malformed_entries_are_dropped_with_a_warning(tmp_path):
    disk = tune.DiskCache("gpu", "9", tmp_path)
    good = tune.Choice("nhwc", "fused", 2, "eng", 0.5, 4)
    bad = [{"layout": "nchw", "kind": "fused", "index": -1, "name": "x"},
           {"layout": "diagonal", "kind": "fused", "index": 0, "name": "x"},
           {"layout": "nchw", "kind": "fused", "index": 0, "name": ""}, "text",
           {"layout": "nchw", "kind": "fused", "index": True, "name": "x"}]
    entries = {"good": good.to_json(), **{f"bad{i}": b for i, b in enumerate(bad)}}
    tmp_path.joinpath(disk.path.name).write_text(json.dumps({"format": 1, "gpu": "gpu", "cudnn": "9", "entries": entries}))
    with pytest.warns(RuntimeWarning, match="dropped 5 malformed entries"):
        assert disk.get("good") == good
    assert disk.get("bad0") is None


def test_the_cache_file_keeps_the_newest_choices_only(tmp_path, monkeypatch):
    """A sweep over many shapes cannot grow the file without bound: the oldest written go."""
    monkeypatch.setattr(tune, "CACHE_MAX_ENTRIES", 3)
    disk = tune.DiskCache("gpu", "9", tmp_path)
    c = [tune.Choice("nchw", "conv", i, f"eng{i}", 0.001, 1) for i in range(5)]
    for i in range(4):
        disk.put(f"k{i}", c[i])
    disk.put("k1", c[4])  # re-written: the newest now
    fresh = tune.DiskCache("gpu", "9", tmp_path)
    assert [k for k in ("k0", "k1", "k2", "k3") if fresh.get(k) is not None] == ["k1", "k2", "k3"]
    assert fresh.get("k1") == c[4]
    assert list(json.loads(disk.path.read_text())["data"]["entries"]) == ["k2", "k3", "k1"]


def test_an_unwritable_cache_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    disk = tune.DiskCache("gpu", "9", blocker / "sub")  # a folder below a file cannot be made
    fe = FakeFrontend(VGG_TABLE)
    with pytest.warns(RuntimeWarning, match="cannot write the cuDNN plan cache"):
        _g, choice = tune.select(fe, None, spec(), timer(fe), autotune=True, limit=8, disk=disk)
    assert choice.name == "implicit_gemm"


# ==== the cuBLAS GEMM plan ==========================================================================

def emulate(g, a_base, a_off, b_base, b_off, c_base, c_off):
    """cublasGemmStridedBatchedEx on flat element buffers, column-major as cuBLAS defines it."""
    def mat(buf, off, rows, cols, ld):  # column-major rows x cols at off with leading dimension ld
        return np.lib.stride_tricks.as_strided(buf[off:], (rows, cols), (buf.itemsize, ld * buf.itemsize))

    for ob, oa, oc in g.outer:
        for i in range(g.batch):
            fr, fc = (g.m, g.k) if g.op_first == gemm.OP_N else (g.k, g.m)
            first = mat(b_base, b_off + ob + i * g.stride_first, fr, fc, g.ld_first)
            first = first if g.op_first == gemm.OP_N else first.T
            sr, sc = (g.k, g.n) if g.op_second == gemm.OP_N else (g.n, g.k)
            second = mat(a_base, a_off + oa + i * g.stride_second, sr, sc, g.ld_second)
            second = second if g.op_second == gemm.OP_N else second.T
            c = mat(c_base, c_off + oc + i * g.stride_c, g.m, g.n, g.ldc)
            c[...] = first @ second


def _view(rng, shape, how):
    """(flat base, element offset, view) for an operand with the strides ``how`` asks for."""
    if how == "c":
        base = rng.standard_normal(int(np.prod(shape)) + 3)
        return base, 3, base[3:].reshape(shape)
    if how == "T":  # the last two dims transposed in memory
        t = shape[:-2] + (shape[-1], shape[-2])
        base = rng.standard_normal(int(np.prod(t)) + 1)
        return base, 1, base[1:].reshape(t).swapaxes(-1, -2)
    if how == "pad":  # rows padded: ld > row length
        big = shape[:-1] + (shape[-1] + 3,)
        base = rng.standard_normal(int(np.prod(big)) + 2)
        return base, 2, base[2:].reshape(big)[..., : shape[-1]]
    raise AssertionError(how)


def _offset(base, view):
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize


@pytest.mark.parametrize("ashape,bshape", [
    ((5, 7), (7, 3)), ((1, 7), (7, 1)), ((4, 1), (1, 6)), ((3, 5, 7), (7, 2)), ((2, 1, 4, 3), (5, 3, 6)),
    ((6, 4, 3), (1, 3, 5)), ((2, 3, 4, 5), (2, 3, 5, 2)), ((1, 9), (3, 9, 4)),
])
def test_gemm_plan_matches_numpy_matmul(ashape, bshape):
    rng = np.random.default_rng(sum(ashape) * 31 + sum(bshape))
    for how_a, how_b in itertools.product(["c", "T", "pad"], repeat=2):
        ab, ao, a = _view(rng, ashape, how_a)
        bb, bo, b = _view(rng, bshape, how_b)
        ref = np.matmul(a, b)
        c = np.full(ref.shape, np.nan)
        g = gemm.plan_arrays(a.shape, a.strides, b.shape, b.strides, c.shape, c.strides, 8)
        assert not isinstance(g, str), (how_a, how_b, g)
        emulate(g, ab, _offset(ab, a), bb, _offset(bb, b), c.reshape(-1), 0)
        np.testing.assert_allclose(c, ref, rtol=1e-12, atol=1e-12, err_msg=f"{ashape}@{bshape} {how_a}/{how_b}")


def test_gemm_plan_writes_into_a_strided_output_like_the_conv_blocks():
    """conv2d 'gemm': w (G, Og, K) @ cols (nb, G, K, L) into a slice of y (N, G, Og, Ho*Wo)."""
    rng = np.random.default_rng(5)
    G, Og, K, nb, L, HW = 3, 4, 6, 2, 5, 9
    w = rng.standard_normal((G, Og, K))
    cols = rng.standard_normal((nb, G, K, L))
    y = np.full((nb + 1, G, Og, HW), np.nan)
    out = y[1:, :, :, 2 : 2 + L]
    g = gemm.plan_arrays(w.shape, w.strides, cols.shape, cols.strides, out.shape, out.strides, 8)
    assert g.batch == G and len(g.outer) == nb  # the broadcast weight cannot merge with the image dim
    emulate(g, w.reshape(-1), 0, cols.reshape(-1), 0, y.reshape(-1), _offset(y.reshape(-1), out))
    np.testing.assert_allclose(out, np.matmul(w, cols), rtol=1e-12)
    assert np.isnan(y[0]).all() and np.isnan(y[1:, :, :, :2]).all()  # nothing outside the slice


def test_gemm_plan_merges_batches_and_asks_for_copies_it_needs():
    dims = gemm.collapse((2, 3, 4), (48, 16, 4), (0, 0, 0), (12, 4, 1))
    assert dims == [(24, (4, 0, 1))]
    assert gemm.collapse((2, 1, 3), (0, 99, 5), (3, 99, 1)) == [(2, (0, 3)), (3, (5, 1))]
    a = np.ones((4, 6))[:, ::2]  # column stride 2: no unit stride
    b = np.ones((3, 2))
    c = np.empty((4, 2))
    assert gemm.plan_arrays(a.shape, a.strides, b.shape, b.strides, c.shape, c.strides, 8) == "a"
    assert gemm.plan_arrays(b.T.shape, b.T.strides, a.shape[::-1], a.T.strides, (2, 4), (32, 8), 8) == "b"
    assert gemm.plan_arrays((2, 0), (0, 8), (0, 3), (24, 8), (2, 3), (24, 8), 8) == "zero"
    assert gemm.plan_arrays((0, 4), (32, 8), (4, 3), (24, 8), (0, 3), (24, 8), 8) == "empty"
    ct = np.empty((2, 4)).T  # output transposed in memory: computed packed, then copied
    assert gemm.plan_arrays((4, 3), (24, 8), (3, 2), (16, 8), ct.shape, ct.strides, 8) == "c"


# ==== cudnn_conv.py end to end, on a fake CuPy (NumPy memory) and a computing fake frontend ========

import ctypes  # noqa: E402
import types  # noqa: E402

from reference import conv2d_ref  # noqa: E402
from strategies import values  # noqa: E402
from tolerance import assert_agrees  # noqa: E402


class FA(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` as a CuPy array does."""

    @property
    def data(self):
        return SimpleNamespace(ptr=self.__array_interface__["data"][0])


def _fa(a):
    return np.asarray(a).view(FA)


def _raw_view(ptr, dims, strides, dtype):
    dtype = np.dtype(dtype)
    span = 1 + sum((d - 1) * s for d, s in zip(dims, strides))
    flat = np.frombuffer((ctypes.c_char * (span * dtype.itemsize)).from_address(ptr), dtype=dtype, count=span)
    return np.lib.stride_tricks.as_strided(flat, dims, [s * dtype.itemsize for s in strides])


class ComputingGraph(FakeGraph):
    """Executes a plan by computing the convolution through the pointers and strides it was given."""

    def _conv(self, pack, index):
        assert index in self.built, "executing a plan that was never built"
        self.fe.last_seconds = self.configs[index][2]
        dt = {"half": np.float16, "float": np.float32, "double": np.float64}[self.kw["io_data_type"]]
        by_uid = {t.uid: t for t in self.tensors}
        X, W, Y = by_uid[self.uid_of("X")], by_uid[self.uid_of("W")], self.tensors[-1]
        x = _raw_view(pack[X.uid], X.dim, X.stride, dt)
        w = _raw_view(pack[W.uid], W.dim, W.stride, dt)
        b = None
        if "bias" in self.ops:
            B = by_uid[self.uid_of("B")]
            b = _raw_view(pack[B.uid], B.dim, B.stride, dt).reshape(-1)
        kw = self.conv_kw
        ref, _ = conv2d_ref(x, w, b, stride=tuple(kw["stride"]), padding=tuple(kw["pre_padding"]),
                            dilation=tuple(kw["dilation"]))
        y = _raw_view(pack[Y.uid], Y.dim, Y.stride, dt)
        y[...] = ref.astype(dt)

    def uid_of(self, name):
        return next(t.uid for t in self.tensors if t.name == name)

    def execute_plan_at_index(self, tensor_dict, workspace, index, handle, tensor_uids=None):
        """The public entry: {uid: array or pointer}; the new frontend also takes buffers + tensor_uids."""
        if tensor_uids is not None:
            if self.fe.api != "new":
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
        ComputingGraph._compute(self, pack, index)

    def _execute_plan_at_index(self, pack, ws, index, handle):
        if self.fe.api != "classic":
            raise AttributeError("'pygraph' object has no attribute '_execute_plan_at_index'")
        self.fe.forms.append("classic")
        ComputingGraph._compute(self, pack, index)

    def _compute(self, pack, index):
        FakeGraph._execute_plan_at_index(self, pack, 0, index, None)
        ComputingGraph._conv(self, pack, index)


class ComputingFrontend(FakeFrontend):
    __version__ = "fake"

    def __init__(self, table, api="classic"):
        super().__init__(table)
        self.streams, self.last_seconds, self.api, self.forms = [], 0.0, api, []

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


@pytest.fixture(params=["classic", "new"])
def fake_cuda(request, monkeypatch, tmp_path):
    """(cudnn_conv module, fake frontend, fake cupy) with the GPU libraries replaced.

    Both frontend generations: "classic" (<= 1.2x, a pybind graph with _execute_plan_at_index)
    and "new" (1.3x, a Python graph whose execute_plan_at_index takes buffers + tensor_uids).
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
    cp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FA)
    cp.cuda = SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=state.stream, synchronize=lambda: None),
                              Event=Event,
                              get_elapsed_time=lambda s, e: fe.last_seconds * 1e3,
                              memory=SimpleNamespace(OutOfMemoryError=OOM))
    cp.state = state
    cp.ndarray = lambda shape, dtype, memptr, strides: _raw_view(
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
    sys.modules.pop("xdev_fake_cuda.cudnn_tune", None)


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
    y = conv.conv2d(_fa(x), _fa(w), _fa(b), _params(xs, ws))
    _check(y, x, w, b, np.float32)
    assert y.flags.c_contiguous  # NCHW result
    c = conv.last.choice
    assert (c.layout, c.kind, c.name) == ("nchw", "conv", "implicit_gemm")  # bias kernel after the conv
    assert conv.build_seconds > 0
    n_exec = len(fe.executions())
    y2 = conv.conv2d(_fa(x), _fa(w), _fa(b), _params(xs, ws))  # the hot path: no build, one execute
    np.testing.assert_array_equal(y2, y)
    assert len(fe.executions()) == n_exec + 1 and fe.streams == [7]
    # The hot path uses the entry picked once per key among those this frontend has.
    usable = {"classic": {"_classic", "_ordered", "_ptr_dict", "_array_dict"} - {"_ordered"},
              "new": {"_ordered", "_ptr_dict", "_array_dict"}}[fe.api]
    assert conv.last.form in usable
    assert fe.forms[-1] == {"_classic": "classic", "_ordered": "ordered"}.get(conv.last.form, "dict")
    cp.state.stream = 9  # another stream: the handle is bound again, once
    conv.conv2d(_fa(x), _fa(w), _fa(b), _params(xs, ws))
    conv.conv2d(_fa(x), _fa(w), _fa(b), _params(xs, ws))
    assert fe.streams == [7, 9]


def test_cudnn_conv_float16_channels_last_input_runs_without_a_copy(fake_cuda):
    mod, fe, _cp = fake_cuda
    fe.table = SMALL
    xs, ws = (2, 8, 5, 7), (6, 8, 3, 3)
    x, w, b = values(4, xs, np.float16), values(5, ws, np.float16), values(6, (6,), np.float16)
    xcl = _fa(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    wcl = _fa(np.ascontiguousarray(w.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    conv = mod.CudnnConv(0, (9, 0), "Fake H100")
    y = conv.conv2d(xcl, wcl, _fa(b), _params(xs, ws))
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
    y = conv.conv2d(_fa(x), _fa(w), None, _params(xs, ws))
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
    first.conv2d(_fa(x), _fa(w), None, _params(xs, ws))
    assert len(fe.builds) > 1
    builds = len(fe.builds)
    fresh = mod.CudnnConv(0, (9, 0), "Fake H100")  # nothing in memory
    y = fresh.conv2d(_fa(x), _fa(w), None, _params(xs, ws))
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
            conv.conv2d(_fa(values(1, xs, np.float32)), _fa(values(2, ws, np.float32)), None, _params(xs, ws))
    assert len(fe.graphs) == 1  # the failure is cached: built once


# ==== device.py's matmul on a fake CuPy and a fake cuBLAS that computes through the pointers =========

_CUDA_DT = {0: np.float32, 1: np.float64, 2: np.float16}
_COMPUTE_SCALAR = {68: np.float32, 77: np.float32, 70: np.float64}


class FakeCublas(types.ModuleType):
    """cublasGemmEx / cublasGemmStridedBatchedEx as CuPy's binding calls them, computed in float64."""

    def __init__(self):
        super().__init__("cupy_backends.cuda.libs.cublas")
        self.calls, self.modes, self.streams = [], {}, []
        self.current_stream = 0  # CuPy's current stream, as the fake cupy reports it

    def create(self):
        return 77

    def setMathMode(self, h, mode):
        self.modes[h] = mode

    def setStream(self, h, stream):
        self.streams.append((h, stream))

    def gemmEx(self, h, ta, tb, m, n, k, alpha, A, At, lda, B, Bt, ldb, beta, C, Ct, ldc, compute, algo):
        self.gemmStridedBatchedEx(h, ta, tb, m, n, k, alpha, A, At, lda, 0, B, Bt, ldb, 0, beta, C, Ct, ldc, 0, 1,
                                  compute, algo)

    def gemmStridedBatchedEx(self, h, ta, tb, m, n, k, alpha, A, At, lda, sA, B, Bt, ldb, sB, beta, C, Ct, ldc, sC,
                             batch, compute, algo):
        assert At == Bt == Ct and algo == -1
        dt = np.dtype(_CUDA_DT[At])
        sdt = np.dtype(_COMPUTE_SCALAR[compute])
        self.calls.append(dict(dtype=dt.name, compute=compute, batch=batch))
        al = _raw_view(alpha, (1,), (1,), sdt)[0]
        be = _raw_view(beta, (1,), (1,), sdt)[0]
        isz = dt.itemsize
        for i in range(batch):
            a = _raw_view(A + i * sA * isz, (m, k) if ta == 0 else (k, m), (1, lda), dt)
            b = _raw_view(B + i * sB * isz, (k, n) if tb == 0 else (n, k), (1, ldb), dt)
            c = _raw_view(C + i * sC * isz, (m, n), (1, ldc), dt)
            a64 = (a if ta == 0 else a.T).astype(np.float64)
            b64 = (b if tb == 0 else b.T).astype(np.float64)
            c[...] = (al * (a64 @ b64) + (be * c if be else 0)).astype(dt)


@pytest.fixture
def fake_device(monkeypatch):
    cp = types.ModuleType("cupy")
    cp.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(FA)
    cp.ascontiguousarray = lambda a: np.ascontiguousarray(a).view(FA)

    class Err(Exception):
        pass

    cp.cuda = SimpleNamespace(memory=SimpleNamespace(OutOfMemoryError=Err), runtime=SimpleNamespace(CUDARuntimeError=Err),
                              get_current_stream=lambda: SimpleNamespace(ptr=cublas.current_stream))
    cublas = FakeCublas()
    libs = types.ModuleType("cupy_backends.cuda.libs")
    libs.cublas = cublas
    for name, m in (("cupy", cp), ("cupyx", types.ModuleType("cupyx")),
                    ("cupy_backends", types.ModuleType("cupy_backends")),
                    ("cupy_backends.cuda", types.ModuleType("cupy_backends.cuda")),
                    ("cupy_backends.cuda.libs", libs), ("cupy_backends.cuda.libs.cublas", cublas)):
        monkeypatch.setitem(sys.modules, name, m)
    root = types.ModuleType("xdev_fake_root")
    root.__path__ = [str(CUDA_DIR.parent)]
    pkg = types.ModuleType("xdev_fake_root.cuda")
    pkg.__path__ = [str(CUDA_DIR)]
    monkeypatch.setitem(sys.modules, "xdev_fake_root", root)
    monkeypatch.setitem(sys.modules, "xdev_fake_root.cuda", pkg)
    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    spec = importlib.util.spec_from_file_location("xdev_fake_root.cuda.device", CUDA_DIR / "device.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    import contextlib
    import threading

    dev = object.__new__(mod.CudaDevice)
    dev.index, dev.cc, dev.key, dev.name = 0, (9, 0), "cuda:0", "Fake H100"
    dev._cp, dev._tls, dev._gemm_plans = contextlib.nullcontext(), threading.local(), {}
    yield dev, cublas
    for name in [n for n in sys.modules if n.startswith("xdev_fake_root.")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("ashape,bshape", [((7,), (7,)), ((1, 9), (9, 1)), ((5, 7), (7,)), ((7,), (7, 3)),
                                           ((3, 5, 7), (7, 2)), ((2, 1, 4, 3), (5, 3, 6)), ((4, 0), (0, 3)),
                                           ((0, 4), (4, 3)), ((2, 3, 4), (2, 4, 5))])
def test_device_matmul_has_numpy_semantics_on_cublas(fake_device, ashape, bshape):
    dev, cublas = fake_device
    for i, dt in enumerate([np.float16, np.float32, np.float64]):
        a = values(10 + i, ashape, dt)
        b = values(20 + i, bshape, dt)
        views = [(a, b)]
        if a.ndim >= 2 and b.ndim >= 2:  # transposed-in-memory operands reach cuBLAS without a copy
            views.append((np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2),
                          np.ascontiguousarray(b.swapaxes(-1, -2)).swapaxes(-1, -2)))
        for va, vb in views:
            got = dev.matmul(_fa(va), _fa(vb))
            ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
            assert got.shape == ref.shape and got.dtype == dt
            if ref.size:
                from reference import matmul_ref

                r, r_abs = matmul_ref(a, b)
                acc = np.dtype(np.float32) if dt == np.float16 else np.dtype(dt)
                assert_agrees(np.asarray(got), r, r_abs, max(a.shape[-1], 1), acc, np.dtype(dt), f"{ashape}@{bshape}")
    computes = {c["dtype"]: c["compute"] for c in cublas.calls}
    if cublas.calls:
        # float16 accumulates in FP32, float32 is plain FP32 (no TF32), float64 in FP64; xdev's own handle.
        assert computes == {"float16": 68, "float32": 68, "float64": 70}
        assert cublas.modes == {77: 0}


def test_device_matmul_tf32_is_a_compute_type_in_the_call(fake_device, monkeypatch):
    dev, cublas = fake_device
    a = values(1, (8, 8), np.float32)
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")
    dev.matmul(_fa(a), _fa(a))
    dev.cc = (7, 5)  # no TF32 tensor cores: stays FP32
    dev.matmul(_fa(a), _fa(a))
    monkeypatch.delenv("XDEV_CUDA_TF32")
    dev.cc = (9, 0)
    dev.matmul(_fa(a), _fa(a))
    assert [c["compute"] for c in cublas.calls] == [77, 68, 68]


def test_device_conv_gemm_blocks_go_through_the_same_cublas_path(fake_device):
    dev, cublas = fake_device
    G, Og, K, nb, L, HW = 2, 3, 5, 2, 4, 7
    w = values(1, (G, Og, K), np.float32)
    cols = values(2, (nb, G, K, L), np.float32)
    y = _fa(np.full((nb, G, Og, HW), np.nan, np.float32))
    dev.gemm_into(_fa(w), _fa(cols), out=y[:, :, :, 1 : 1 + L])
    np.testing.assert_allclose(y[:, :, :, 1 : 1 + L], np.matmul(w, cols), rtol=1e-5)
    assert np.isnan(y[:, :, :, 0]).all() and np.isnan(y[:, :, :, 1 + L :]).all()
    assert [c["batch"] for c in cublas.calls] == [G] * nb


# ==== on a GPU (skipped with the reason elsewhere) ===================================================

import os  # noqa: E402
import subprocess  # noqa: E402
import textwrap  # noqa: E402


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


def test_gpu_matmul_leaves_cupys_global_state_alone(cuda, monkeypatch):
    import cupy
    from cupy._core import _routines_linalg as rl
    from cupy_backends.cuda.libs import cublas

    a = xdev.asarray(values(1, (64, 64), np.float32), backend="cuda")
    before = (rl.get_compute_type(np.dtype(np.float32)), cublas.getMathMode(cupy.cuda.device.get_cublas_handle()))
    for tf32 in ("1", "0"):
        monkeypatch.setenv("XDEV_CUDA_TF32", tf32)
        xdev.matmul(a, a)
        xdev.matmul(a.reshape(1, 64, 64), a)
        xdev.conv2d(values(2, (1, 4, 8, 8), np.float32), values(3, (4, 4, 3, 3), np.float32), algorithm="gemm",
                    backend="cuda")
        after = (rl.get_compute_type(np.dtype(np.float32)), cublas.getMathMode(cupy.cuda.device.get_cublas_handle()))
        assert after == before


def test_cublas_runs_on_cupys_current_stream(fake_device):
    # The handle is bound to CuPy's current stream before a GEMM, and again only on a change.
    dev, cublas = fake_device
    a, b = _fa(values(1, (4, 3), np.float32)), _fa(values(2, (3, 5), np.float32))
    dev.matmul(a, b)
    dev.matmul(a, b)
    cublas.current_stream = 1234
    dev.matmul(a, b)
    assert cublas.streams == [(77, 0), (77, 1234)]
