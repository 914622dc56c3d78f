"""The benchmark's pipeline op: steady-state figures, stages at the pipeline's concurrency,
the bottleneck and its efficiency, the timeline the figures come from."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from availability import backend_status
from stagers import SpyStager
from xdev.bench import pipeline as pl


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline")
    # The backends are named, not "whatever is here": the rows checked below must not depend
    # on whether this machine has a GPU. The OpenCL device may be a CPU or a GPU.
    backends = ["numpy"] + (["opencl"] if backend_status("opencl").available else [])
    cmd = [sys.executable, "-m", "xdev.bench", "--quick", "--ops", "pipeline,transfer", "--image", "16",
           "--batch", "8", "--repeat", "2", "--backends", ",".join(backends),
           "--json", str(out / "r.json"), "--plot", str(out / "r.png")]
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r, json.loads((out / "r.json").read_text()), out, backends


def _rows(doc, backend):
    return {x["stage"]: x for x in doc["results"] if x["op"] == "pipeline" and x["backend"] == backend}


def test_rows_and_bottleneck(pipeline_run):
    r, doc, out, backends = pipeline_run
    for backend in backends:
        rows = _rows(doc, backend)
        want = {"disk read cold", "disk read warm", "disk stage", "upload", "compute", "serial step",
                "prefetched step"}
        # A plain upload from pinned memory, the upload's yardstick, where the device has pinned memory.
        assert set(rows) == want | ({"upload pinned"} if backend == "opencl" else set()), backend
        pre = rows["prefetched step"]
        assert pre["batch_shape"] == "8x3x16x16" and pre["layers"] in ("conv1_1", "conv1_1+conv1_2")
        per_layer = {"conv1_1": 2 * 8 * 64 * 16 * 16 * 27, "conv1_2": 2 * 8 * 64 * 16 * 16 * 64 * 9}
        assert pre["flops"] == rows["compute"]["flops"] == sum(per_layer[n] for n in pre["layers"].split("+"))
        # Steady state: FILL batches left out of STEADY_QUICK + FILL, two epochs of each kind.
        assert pre["steps"] == pl.FILL + pl.STEADY_QUICK and pre["steady_batches"] == pl.STEADY_QUICK
        assert pre["epochs"] == pl.EPOCHS_QUICK == pre["repeats"] == rows["disk stage"]["repeats"]
        assert pre["workers"] == pl.WORKERS and pre["depth"] == pl.DEPTH
        stages = {k: rows[k]["median_s"] for k in ("disk stage", "upload", "compute")}
        assert pre["bottleneck_stage"] == max(stages, key=stages.get)
        assert pre["bottleneck_s"] == pytest.approx(max(stages.values()))
        assert pre["efficiency"] == pytest.approx(pre["bottleneck_s"] / pre["median_s"])
        assert pre["efficiency_spread"] >= 0
        assert pre["measurement_error"] == (pre["efficiency"] - 1 > pre["efficiency_spread"])
        assert pre["target"] in (["measurement error"] if pre["measurement_error"] else ["met", "NOT met",
                                                                                            "within noise"])
        assert pre["speedup"] == pytest.approx(rows["serial step"]["median_s"] / pre["median_s"])
        assert pre["cold"] or pre["cold_note"]  # cold, or says why not
        assert pre["compute_beside_readers_s"] > 0
        # On NumPy the BLAS threads share the cores with the readers (threadpoolctl: the test extra).
        assert (pre["blas_threads"] >= 1) if backend == "numpy" else pre["blas_threads"] is None
        if backend == "opencl":
            up = rows["upload"]
            assert up["vs_pinned"] == pytest.approx(rows["upload pinned"]["median_s"] / up["median_s"])
            assert up["vs_pinned_spread"] >= 0
            if pre["device_is_cpu"]:
                assert up["upload_target"] is None  # the 0.8x target is a GPU's
            else:
                assert up["upload_target"] in ("met", "NOT met", "within noise")
    pinned = [x for x in doc["results"] if x["op"] == "transfer" and x["algorithm"] == "device-to-host pinned"]
    staged = [x for x in doc["results"] if x["algorithm"] == "host-to-device pageable, staged"]
    if "opencl" in backends:
        assert pinned and staged


def test_timeline_shows_the_batches_the_figures_come_from(pipeline_run):
    r, doc, out, backends = pipeline_run
    n = pl.FILL + pl.STEADY_QUICK
    for backend in backends:
        pre = _rows(doc, backend)["prefetched step"]
        tl = pre["timeline"]
        assert set(tl) == {"disk", "serial", "prefetched"}
        for kind, lanes in (("disk", {"disk read"}), ("serial", {"disk read", "upload", "compute"}),
                            ("prefetched", {"disk read", "upload", "compute"})):
            spans = tl[kind]["spans"]
            assert {s[0] for s in spans} == lanes, (backend, kind)
            assert sorted(s[1] for s in spans if s[0] == "disk read") == list(range(n))  # every batch
            a, b = tl[kind]["window"]
            last = max(s[3] for s in spans if s[1] == n - 1)
            assert 0 <= a < b and b >= last - 1e-6  # the window ends when the last batch is done
            # The window is the figure: per batch over the batches after the fill.
            assert tl[kind]["per_batch_ms"] == pytest.approx((b - a) / (n - pl.FILL))
            if kind != "disk":
                ends = {s[1]: s[3] for s in spans if s[0] == "compute"}
                assert sorted(ends) == list(range(n))
                assert a == pytest.approx(ends[pl.FILL - 1], abs=1e-3) and b == pytest.approx(ends[n - 1], abs=1e-3)
    assert (out / "r-pipeline.png").stat().st_size > 10_000


def test_table(pipeline_run):
    import io

    from rich.console import Console

    r, doc, out, backends = pipeline_run
    assert "pipeline (claim 4)" in r.stdout
    # The run's rows rendered wide enough that no cell wraps (the CLI's 120 columns wrap
    # differently with a GPU's longer notes).
    buf = io.StringIO()
    pl.table(Console(file=buf, width=500, highlight=False), doc["results"])
    text = buf.getvalue()
    assert f"batches {pl.FILL + 1}-{pl.FILL + pl.STEADY_QUICK}" in text
    for label in ("disk read cold, 1 reader", f"disk, {pl.WORKERS} readers", "upload, staged", "efficiency"):
        assert label in text, label
    if "opencl" in backends:  # the staged upload against a plain one from pinned memory, with its spread
        line = next(ln for ln in text.splitlines() if "opencl" in ln and "upload, staged" in ln)
        assert re.search(r"\d+\.\d\d±\d+\.\d\dx a plain upload from pinned memory", line), line

    # On an 80-column terminal the table narrows as the others do: nothing is cut with an
    # ellipsis, and every row keeps its device, median and efficiency figures.
    buf = io.StringIO()
    pl.table(Console(file=buf, width=80, highlight=False, color_system=None, force_terminal=False), doc["results"])
    narrow = buf.getvalue()
    assert max(len(ln) for ln in narrow.splitlines()) <= 80 and "…" not in narrow, narrow
    flat = " ".join(narrow.split())
    for x in (x for x in doc["results"] if x["op"] == "pipeline"):
        assert x["device"] in flat and x["batch_shape"] in flat
        assert f"{x['median_s'] * 1e3:.3f}" in flat or f"{x['median_s'] * 1e3:.1f}" in flat, (x["stage"], flat)
        if x["stage"] == "prefetched step":
            assert f"{x['efficiency']:.2f}±{x['efficiency_spread']:.2f}" in flat


def test_target_verdict_is_noise_aware():
    # bottleneck stage 10 ms: the target is 11.5 ms
    assert pl.target_verdict(10.0, 0.2, 10.0, 0.2) == "met"
    assert pl.target_verdict(14.0, 0.2, 10.0, 0.2) == "NOT met"
    # a prefetched step of 10.3 +- 14 ms (a spread larger than the median) proves nothing
    assert pl.target_verdict(10.3, 14.2, 16.8, 28.9) == "within noise"
    assert pl.target_verdict(14.0, 6.0, 10.0, 0.2) == "within noise"


def test_efficiency_above_one_beyond_its_spread_is_a_measurement_error():
    # Issue 23: "efficiency 1.50-3.31" was printed as a result; a step cannot beat its bottleneck.
    e, sp, bad = pl.efficiency(7.8, 0.5, 2.8, 0.4)
    assert e == pytest.approx(7.8 / 2.8) and bad
    e, sp, bad = pl.efficiency(10.0, 2.0, 9.5, 2.0)  # 1.05, spread ~0.15: within noise of 1
    assert e > 1 and sp > e - 1 and not bad
    assert not pl.efficiency(8.0, 0.1, 10.0, 0.1)[2]
    row = {"stage": "prefetched step", "efficiency": e * 2, "efficiency_spread": 0.1, "bottleneck_stage": "compute",
           "measurement_error": True}
    assert "measurement error" in pl._note(row)


def test_steady_state_leaves_out_the_fill():
    ep = pl._Epoch("prefetched")
    ep.t0 = 0.0
    # A slow fill (the first batches wait for the readers), then one batch every 2 s.
    ep.done = [5.0, 5.1, 5.2, 5.3] + [5.3 + 2.0 * k for k in range(1, 33)]
    assert pl.FILL == 4
    assert ep.per_batch() == pytest.approx(2.0)
    assert ep.window() == pytest.approx([5300.0, (5.3 + 64.0) * 1e3])
    # The median of gaps (the old figure) would say ~2 s too, but the mean from t0 says ~2.1;
    # with bunched arrivals the median of gaps says 0.1 s while the throughput is 2 s:
    ep.done = [5.0 + 4.0 * (k // 2) + 0.1 * (k % 2) for k in range(36)]
    assert float(np.median(np.diff(ep.done))) == pytest.approx(0.1, abs=0.01)
    assert ep.per_batch() == pytest.approx(2.0, rel=0.05)


@pytest.mark.parametrize("backend", ["numpy", "opencl"])
def test_upload_stage_goes_through_the_staging_path(backend, monkeypatch):
    from xdev._registry import get_device

    if backend != "numpy" and not backend_status(backend).available:
        pytest.skip(f"{backend} unavailable: {backend_status(backend).reason}")
    dev = get_device(backend)
    calls: list[str] = []
    make = dev.stager
    monkeypatch.setattr(dev, "stager", lambda slots: SpyStager(make(slots), ("upload_staged", "upload"), calls))
    host = np.ones((2, 3, 4, 4), np.float32)
    staged, pinned = pl._upload_stage(dev, host, 3)
    assert len(staged) == 3 and all(t > 0 for t in staged)
    assert len(pinned) == (3 if dev.pinned_empty((1,), np.dtype(np.float32)) is not None else 0)
    assert calls == ["upload_staged"] * 4  # 3 timed + the warm-up; never the pageable path
