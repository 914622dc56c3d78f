"""python -m xdev.bench: the CLI runs, its JSON is complete, its FLOP counts are right."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from availability import backend_status
from xdev.bench import workloads as wl

REQUIRED_KEYS = {
    "backend": str, "device": str, "op": str, "shape": str, "dtype": str, "algorithm": str,
    "median_s": float, "spread_s": float, "build_s": float, "repeats": int,
}


def test_flop_counts_by_hand():
    assert wl.matmul_flops(2, 3, 4) == 48
    assert wl.matmul_flops(128, 128, 128, batch=3) == 3 * 2 * 128**3
    # N=2, O=4, 5x6 outputs, C=6 in 2 groups (3 per group), 3x3 taps: 2*2*4*30*27
    assert wl.conv_flops(2, 4, 5, 6, 6, 2, 3, 3) == 12960
    first = wl.vgg16(1)[0]  # conv1_1: 3 -> 64 at 224x224
    assert first.flops == 2 * 64 * 224 * 224 * 3 * 9 == 173_408_256
    # The design's figure: 15.35 GMAC per 224x224 image over the 13 layers.
    assert sum(layer.flops for layer in wl.vgg16(1)) == 2 * 15_346_630_656
    assert wl.vgg16(16, image=32)[-1].H == 2 and wl.vgg16(16)[-1].N == 16


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # Every backend is named; the available ones must produce rows, the others a reason.
    # An explicit --batch: the defaults differ between CPUs and GPUs, the checks below must not.
    backends = [b for b in ("numpy", "opencl", "cuda") if backend_status(b).available]
    cmd = [sys.executable, "-m", "xdev.bench", "--quick", "--sizes", "16,33", "--image", "16",
           "--repeat", "2", "--batch", "8", "--backends", "numpy,opencl,cuda",
           "--json", str(out / "r.json"), "--plot", str(out / "r.png")]
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return r, out, backends


def test_cli_quick_runs_and_prints_tables(quick_run):
    r, out, backends = quick_run
    assert r.returncode == 0, r.stderr[-3000:]
    for title in ("matmul", "VGG-16", "transfers", "The lecture's table", "pipeline (claim 4)"):
        assert title in r.stdout
    assert (out / "r.png").stat().st_size > 10_000
    assert (out / "r-pipeline.png").stat().st_size > 10_000


def test_cli_json_is_complete_and_consistent(quick_run):
    r, out, backends = quick_run
    doc = json.loads((out / "r.json").read_text())
    assert {"machine", "results", "config", "published", "skipped"} <= set(doc)
    assert doc["machine"]["cpu"]["logical_cores"] >= 1
    assert [d["device"] for d in doc["machine"]["devices"]] == [
        r_ for r_ in dict.fromkeys(x["device"] for x in doc["results"])]
    for name in ("opencl", "cuda"):
        if not backend_status(name).available:  # named but unavailable: reported, skipped
            assert any(s["backend"] == name and s["reason"] for s in doc["skipped"])
    for row in doc["results"]:
        for key, typ in REQUIRED_KEYS.items():
            assert isinstance(row[key], typ), (key, row)
        # Pipeline rows count the steps of whole epochs instead of --repeat.
        assert row["median_s"] > 0 and row["spread_s"] >= 0 and (row["repeats"] == 2 or row["op"] == "pipeline")
        assert "gflops" in row and "peak_fraction" in row and "speedup_vs_numpy" in row
        if row["flops"]:
            assert row["gflops"] == pytest.approx(row["flops"] / row["median_s"] / 1e9)
        if row["peak_fraction"] is not None:
            assert 0 < row["peak_fraction"]
    for backend in backends:
        for op in ("matmul", "conv2d", "transfer", "roundtrip"):
            assert any(x["backend"] == backend and x["op"] == op for x in doc["results"]), (backend, op)
    mm = [x for x in doc["results"] if x["op"] == "matmul" and x["shape"] == "33x33x33"]
    assert mm and all(x["flops"] == 2 * 33**3 for x in mm)
    conv = [x for x in doc["results"] if x["op"] == "conv2d" and x["layer"] == "conv1_1"]
    assert conv and all(x["flops"] == 8 * 2 * 64 * 16 * 16 * 3 * 9 and x["batch"] == 8 for x in conv)
    totals = [x for x in doc["results"] if x["op"] == "conv2d" and x["layer"] == "total"]
    assert len(totals) == len(backends)
    for t in totals:
        layers = [x for x in doc["results"] if x["op"] == "conv2d" and x["device"] == t["device"]
                  and x["layer"] != "total"]
        assert len(layers) == 13
        assert t["flops"] == sum(x["flops"] for x in layers)
        assert t["median_s"] == pytest.approx(sum(x["median_s"] for x in layers))
    numpy_rows = [x for x in doc["results"] if x["backend"] == "numpy" and x["gflops"]]
    assert all(x["speedup_vs_numpy"] == pytest.approx(1.0) for x in numpy_rows if x["op"] != "roundtrip")


def test_cli_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--ops", "fft"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown op(s) fft" in r.stderr


def test_cli_pipeline_rows(quick_run):
    r, out, backends = quick_run
    doc = json.loads((out / "r.json").read_text())
    for backend in backends:
        rows = {x["stage"]: x for x in doc["results"] if x["op"] == "pipeline" and x["backend"] == backend}
        assert set(rows) == {"disk read cold", "disk read warm", "upload", "compute", "serial step",
                             "prefetched step"}, backend
        pre = rows["prefetched step"]
        assert pre["batch_shape"] == "8x3x16x16" and pre["layers"] == "conv1_1"
        assert pre["flops"] == rows["compute"]["flops"] == 2 * 8 * 64 * 16 * 16 * 27
        stages = {k: rows[k]["median_s"] for k in ("disk read cold", "upload", "compute")}
        assert pre["slowest_stage"] == max(stages, key=stages.get)
        assert pre["efficiency"] == pytest.approx(max(stages.values()) / pre["median_s"])
        assert pre["speedup"] == pytest.approx(rows["serial step"]["median_s"] / pre["median_s"])
        assert set(pre["timeline"]) == {"serial", "prefetched"}
        lanes = {span[0] for span in pre["timeline"]["prefetched"]}
        assert lanes == {"disk read", "upload", "compute"}
        assert pre["cold"] or pre["cold_note"]  # cold, or says why not
    pinned = [x for x in doc["results"] if x["op"] == "transfer" and x["algorithm"] == "device-to-host pinned"]
    staged = [x for x in doc["results"] if x["algorithm"] == "host-to-device pageable, staged"]
    if "opencl" in backends:
        assert pinned and staged
