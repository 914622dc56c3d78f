"""cuDNN plan autotuning without a GPU (backends/cuda/cudnn_tune.py): variants and numeric rules,
the channels-last layout choices, timing and selection against a fake cuDNN frontend with
fake timings, and the plan cache on disk."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from cuda_fakes import FakeFrontend
from cuda_sources import load

tune = load("cudnn_tune")


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
