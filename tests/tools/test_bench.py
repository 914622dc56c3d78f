"""python -m xdev.bench: the CLI runs, its JSON is complete, its FLOP counts are right."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from availability import backend_status, cpu_devices
from xdev.bench import compare, noise, verdict
from xdev.bench import workloads as wl
from xdev.bench.run import Settings, _row, add_speedups, roundtrip_case
from xdev.bench.timing import Timing

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


ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
FAKE_TORCH = Path(__file__).resolve().parent / "fake_torch"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # The backends are pinned to CPUs: what this run measures must not depend on the machine's
    # hardware (a GPU's rows are tested against a fake GPU in test_bench_backends.py). OpenCL on
    # the CPU when there is one (CI requires OpenCL), named by its key: "opencl" alone selects a
    # GPU first where the machine has one. opencl:99:0 exists nowhere: named but absent, it is
    # skipped with its reason. An explicit --batch: the defaults differ between CPUs and GPUs.
    backends = ["numpy"] + cpu_devices("opencl")[:1]
    cmd = [sys.executable, "-m", "xdev.bench", "--quick", "--sizes", "16,33", "--image", "16",
           "--repeat", "2", "--batch", "8", "--backends", ",".join(backends + ["opencl:99:0"]),
           "--reference", "torch", "--json", str(out / "r.json"), "--plot", str(out / "r.png")]
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    # The yardstick path runs against a stand-in torch (tests/fake_torch), found first.
    env["PYTHONPATH"] = os.pathsep.join([str(FAKE_TORCH)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["XDEV_TEST_MARKER"] = "recorded"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return r, out, backends


def test_cli_quick_runs_and_prints_tables(quick_run):
    r, out, backends = quick_run
    assert r.returncode == 0, r.stderr[-3000:]
    for title in ("matmul", "VGG-16", "transfers", "The lecture's table", "pipeline (claim 4)"):
        assert title in r.stdout
    assert (out / "r.png").stat().st_size > 10_000
    assert (out / "r-pipeline.png").stat().st_size > 10_000
    # Piped output: one plain line per finished workload: seconds so far, workload, devices.
    import re

    done = re.findall(r"^\[ *(\d+) s\] (.+): done \((.+)\)$", r.stdout, flags=re.M)
    assert [w for _, w, _ in done][:2] == ["matmul 16", "matmul 33"], r.stdout[:3000]
    assert "conv2d conv5_3" in [w for _, w, _ in done] and "pipeline" in [w for _, w, _ in done]
    assert [int(s) for s, _, _ in done] == sorted(int(s) for s, _, _ in done)
    # The square sweep runs on every device, listed in the order of --backends (then torch).
    sweep = [devs.split(", ") for _, w, devs in done if w in ("matmul 16", "matmul 33")]
    assert sweep == [backends + ["torch:cpu"]] * 2, sweep
    if len(backends) > 1:  # first use of the OpenCL device is announced
        assert f"first use of {backends[1]}" in r.stdout and "s building kernels for" in r.stdout
    # Verdicts come last, after the summary line and its explanation of "vs NumPy".
    flat = " ".join(r.stdout.split())  # piped output is 80 columns wide: long lines wrap
    assert "above 1 = faster" in flat
    tail = flat[flat.index("The lecture's claims, measured here"):]
    assert all(f"claim {n}" in tail for n in (1, 2, 3, 4)) and "wrote" in tail


def test_cli_json_is_complete_and_consistent(quick_run):
    r, out, backends = quick_run
    doc = json.loads((out / "r.json").read_text())
    assert {"machine", "results", "config", "published", "skipped", "schema", "run", "verdicts"} <= set(doc)
    assert doc["machine"]["cpu"]["logical_cores"] >= 1
    assert [d["device"] for d in doc["machine"]["devices"]] == [
        r_ for r_ in dict.fromkeys(x["device"] for x in doc["results"])]
    # named but unavailable: reported, skipped
    assert any(s["backend"] == "opencl:99:0" and s["reason"] for s in doc["skipped"])
    # present but not measured (another OpenCL device): said, with how to include them all
    others = [k for k in backend_status("opencl").devices if k not in backends] if len(backends) > 1 else []
    for k in others:
        entry = next(s for s in doc["skipped"] if s["backend"] == k)
        assert entry["present"] is True and f"--backends {','.join(backends + others)}" in entry["reason"]
        assert f"{k} skipped: present but not measured" in " ".join(r.stdout.split())
    rows = [x for x in doc["results"] if not x["reference"]]
    for row in rows:
        for key, typ in REQUIRED_KEYS.items():
            assert isinstance(row[key], typ), (key, row)
        # Pipeline rows count the steps of whole epochs instead of --repeat.
        assert row["median_s"] > 0 and row["spread_s"] >= 0 and (row["repeats"] == 2 or row["op"] == "pipeline")
        assert "gflops" in row and "peak_fraction" in row and "speedup_vs_numpy" in row
        if row["flops"]:
            assert row["gflops"] == pytest.approx(row["flops"] / row["median_s"] / 1e9)
        if row["peak_fraction"] is not None:
            assert 0 < row["peak_fraction"]
    for key in backends:
        for op in ("matmul", "conv2d", "transfer", "roundtrip"):
            assert any(x["device"] == key and x["op"] == op for x in doc["results"]), (key, op)
    mm = [x for x in doc["results"] if x["op"] == "matmul" and x["shape"] == "33x33x33"]
    assert mm and all(x["flops"] == 2 * 33**3 for x in mm)
    conv = [x for x in doc["results"] if x["op"] == "conv2d" and x["layer"] == "conv1_1"]
    assert conv and all(x["flops"] == 8 * 2 * 64 * 16 * 16 * 3 * 9 and x["batch"] == 8 for x in conv)
    totals = [x for x in doc["results"] if x["op"] == "conv2d" and x["layer"] == "total"]
    assert len([t for t in totals if not t["reference"]]) == len(backends)
    for t in totals:
        layers = [x for x in doc["results"] if x["op"] == "conv2d" and x["device"] == t["device"]
                  and x["layer"] != "total"]
        assert len(layers) == 13
        assert t["flops"] == sum(x["flops"] for x in layers)
        assert t["median_s"] == pytest.approx(sum(x["median_s"] for x in layers))
    numpy_rows = [x for x in doc["results"] if x["backend"] == "numpy" and x["gflops"]]
    assert all(x["speedup_vs_numpy"] == pytest.approx(1.0) for x in numpy_rows if x["op"] != "roundtrip")
    # --sizes names exactly the sweep: no skinny row.
    assert {x["shape"] for x in doc["results"] if x["op"] == "matmul"} == {"16x16x16", "33x33x33"}


def test_cli_json_records_run_metadata_and_verdicts(quick_run):
    r, out, backends = quick_run
    doc = json.loads((out / "r.json").read_text())
    assert doc["schema"] == {"name": "xdev.bench", "version": 3}
    run = doc["run"]
    assert run["xdev_version"] == __import__("xdev").__version__
    assert run["timestamp_utc"].endswith("Z") and run["timestamp_utc"][:2] == "20"
    assert run["environment"]["XDEV_TEST_MARKER"] == "recorded"
    assert "XDEV_BACKEND" not in run["environment"]
    if (ROOT / ".git").exists():
        assert len(run["git"]["commit"]) == 40 and isinstance(run["git"]["dirty"], bool)
    assert run["threads"]["os_cpu_count"] >= 1
    load = run["load"]
    assert load["cpus"] >= 1 and isinstance(load["warnings"], list)
    if Path("/proc/loadavg").exists():
        assert len(load["loadavg_before"]) == 3 and len(load["loadavg_after"]) == 3
        assert 0 <= load["self_share"] and 0 <= load["others_share"] <= 1
    claims = {v["claim"]: v for v in doc["verdicts"]}
    assert sorted(claims) == [1, 2, 3, 4]
    for v in claims.values():
        assert v["status"] in ("supported", "contradicted", "within noise", "mixed", "untested",
                               "inconclusive (busy machine)")
        assert v["says"] and (v["summary"] or v["reason"])
    # CPU devices only in this run, whatever the machine has:
    assert claims[1]["status"] == "untested" and "no GPU here" in claims[1]["reason"]
    assert claims[2]["status"] == "untested" and "no GPU with a convolution library here" in claims[2]["reason"]
    if len(backends) > 1:  # OpenCL vs NumPy on the CPU: measured, with spreads and both ISAs
        nums = [n for n in claims[3]["numbers"] if "CPU" in n["what"]]
        assert nums and all(n["spread"] >= 0 and isinstance(n["within_noise"], bool) for n in nums)
        assert all(n["isa_a"] and n["isa_b"] and isinstance(n["like_for_like"], bool) for n in nums)
    # every CPU row names the instruction set its code ran (OpenBLAS's kernels, PoCL's target)
    cpu_rows = [x for x in doc["results"] if x["op"] in ("matmul", "conv2d", "transfer", "pipeline")]
    assert cpu_rows and all(x.get("isa") and x.get("isa_source") for x in cpu_rows)
    numpy_dev = next(d for d in doc["machine"]["devices"] if d["device"] == "numpy")
    assert numpy_dev["isa"] in ("AVX2", "AVX-512", "AVX", "SSE", "NEON") and "kernels" in numpy_dev["isa_source"]
    assert claims[4]["numbers"] and all("share" in n for n in claims[4]["numbers"])
    for x in doc["results"]:
        assert {"speedup_spread", "within_noise", "peak_error", "reference"} <= set(x)
        if x["speedup_vs_numpy"] is not None:
            assert x["speedup_spread"] >= 0 and isinstance(x["within_noise"], bool)
        if x["op"] == "roundtrip" and x["algorithm"] != "compute only":
            assert "transfer_share_spread" in x and isinstance(x["transfer_within_noise"], bool)


def test_cli_reference_rows_from_torch(quick_run):
    r, out, backends = quick_run
    doc = json.loads((out / "r.json").read_text())
    ref = [x for x in doc["results"] if x["reference"]]
    assert {x["op"] for x in ref} == {"matmul", "conv2d"}  # no transfers: torch has no separate device here
    assert all(x["backend"] == "torch" and x["device"] == "torch:cpu" for x in ref)
    assert all(x["algorithm"] == "torch (reference)" for x in ref)
    assert any(d.get("reference") and d["torch"] == "0.0+fake" for d in doc["machine"]["devices"])
    mm = [x for x in ref if x["shape"] == "33x33x33"]
    assert mm and mm[0]["speedup_vs_numpy"] is not None
    assert "torch:cpu" in r.stdout


def test_reference_without_torch_is_reported(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    blocker = tmp_path / "torch.py"
    blocker.write_text("raise ImportError('blocked for this test')\n")
    env["PYTHONPATH"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--backends", "numpy", "--ops", "matmul",
                        "--sizes", "8", "--repeat", "1", "--reference", "torch", "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert any("torch" in s["backend"] and "pip install torch" in s["reason"] for s in doc["skipped"])
    assert not any(x["reference"] for x in doc["results"])


def test_compare_two_committed_result_files(capsys, tmp_path):
    a = RESULTS / "cpu-zen5-2026-11-26.json"
    b = RESULTS / "cpu-zen5-2026-11-26-openblas-skylakex-quick.json"
    assert compare.main([str(a), str(b), "--plot", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "schema 1" in text and "shared rows" in text
    # (80 columns: the shape is abbreviated, nothing cut)
    table = [ln for ln in text[text.index("shared rows"):].splitlines()[1:] if not ln.startswith("wrote ")]
    assert table and max(len(ln) for ln in table) <= 80
    line = next(ln for ln in text.splitlines() if ln.startswith("matmul") and "2048^3" in ln
                and " numpy " in ln)
    docs = [json.loads(p.read_text()) for p in (a, b)]
    med = [next(x["median_s"] for x in d["results"] if x["device"] == "numpy" and x["shape"] == "2048x2048x2048")
           for d in docs]
    assert f"{med[0] / med[1]:.2f}" in line  # B's throughput over A's
    assert (tmp_path / "c.png").stat().st_size > 5_000


def test_compare_cli_with_a_new_file(quick_run):
    r, out, backends = quick_run
    cmd = [sys.executable, "-m", "xdev.bench", "compare", str(out / "r.json"), str(out / "r.json")]
    c = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert c.returncode == 0, c.stderr
    assert "schema 3" in c.stdout and "1.00" in c.stdout and "~" in c.stdout  # itself: within noise


def test_compare_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(SystemExit, match="no 'results' list"):
        compare.main([str(bad), str(bad)])
    with pytest.raises(SystemExit, match="cannot read"):
        compare.main([str(tmp_path / "missing.json"), str(bad)])


# -- the measurement method, without timing anything real ----------------------------------

class FakeDevice:
    """Records the order of calls; each call 'takes' the next time from a script."""
    backend = "fake"
    is_cpu = True
    build_seconds = 0.0

    def __init__(self, key, log, times=lambda i: 1e-3):
        self.key, self.name, self.log, self.times, self.n = key, key, log, times, 0

    def synchronize(self):
        pass

    def elapsed(self, fn, repeat):
        out = []
        for _ in range(repeat):
            fn()
            out.append(self.times(self.n))
            self.n += 1
        return out


def test_interleaving_alternates_the_cases():
    log = []
    a, b = FakeDevice("A", log), FakeDevice("B", log)
    cases = [noise.Case(a, lambda: log.append("A")), noise.Case(b, lambda: log.append("B"))]
    t = noise.measure_interleaved(cases, target_s=1.0, repeat=4)
    assert [x.repeats for x in t] == [4, 4]
    timed = "".join(log[4:])  # after each case's first call and warm-up
    assert timed == "ABBAABBA"


def test_adaptive_repeats_stop_on_spread_target_and_on_time():
    log = []
    steady = noise.Case(FakeDevice("A", log), lambda: None)
    t = noise.measure_interleaved([steady], target_s=1.0)
    assert t[0].spread_s == 0 and t[0].repeats == noise.MIN_ROUNDS * 50  # spread target met at MIN_ROUNDS
    noisy = noise.Case(FakeDevice("B", log, times=lambda i: 3e-3 if i % 2 else 1e-3), lambda: None)
    t = noise.measure_interleaved([noisy], target_s=0.05)
    assert t[0].spread_s > 0 and sum(noisy.samples) >= 0.05  # never met the target: stopped on time


def test_ratio_spread_and_within_noise():
    r, sp, noisy = noise.ratio(2.0, 0.1, 1.0, 0.05)
    assert r == pytest.approx(2.0) and sp == pytest.approx(2.0 * (0.025**2 + 0.025**2) ** 0.5)
    assert noisy is False
    assert noise.ratio(1.0, 0.2, 1.05, 0.2)[2] is True
    assert noise.fmt_ratio(1.0, 0.1, True).endswith("~")


def test_load_summary_warns_when_others_are_busy():
    before = {"time": 0.0, "cpus": 2, "loadavg": [1.9, 1, 1], "self_cpu_s": 0.0,
              "stat": {"busy": 0, "idle": 0, "steal": 0}}
    after = {"time": 10.0, "cpus": 2, "loadavg": [2.0, 1, 1], "self_cpu_s": 10.0,  # we used one CPU
             "stat": {"busy": 1800, "idle": 100, "steal": 100}}  # jiffies: 90% busy, 5% steal
    s = noise.summarize_load(before, after)
    assert s["self_share"] == pytest.approx(0.5) and s["others_share"] == pytest.approx(0.4)
    assert s["steal_share"] == pytest.approx(0.05)
    text = " ".join(s["warnings"])
    assert "busy before the run" in text and "other processes used 40%" in text and "steal" in text
    quiet = dict(after, loadavg=[0.1, 0.1, 0.1], stat={"busy": 1000, "idle": 1000, "steal": 0})
    assert noise.summarize_load(dict(before, loadavg=[0.1, 0.1, 0.1]), quiet)["warnings"] == []
    live = noise.sample_load()
    assert live["cpus"] >= 1 and live["self_cpu_s"] >= 0


def _dev(key="numpy", backend="numpy"):
    return type("D", (), {"key": key, "backend": backend, "name": key, "is_cpu": True,
                          "info": lambda self: {"isa": "AVX2", "isa_source": "test"}})()


def test_peak_above_100_is_flagged():
    s = Settings(__import__("numpy").dtype("float32"), 0.1, None)
    s.peak["numpy"] = (1.0, "test")
    row = _row(_dev(), s, "matmul", "8x8x8", "numpy", Timing(1e-9, 0.0, 3, 0.0, 0.0), 1024)
    assert row["peak_fraction"] > 1 and "impossible" in row["peak_error"]
    s.peak["numpy"] = (1e9, "test")
    assert _row(_dev(), s, "matmul", "8x8x8", "numpy", Timing(1e-3, 0.0, 3, 0.0, 0.0), 1024)["peak_error"] is None


def test_cpu_peak_is_calibrated_again_when_rows_came_out_above_it():
    """A calibration that met another process's burst (the first read 115 GFLOP/s where NumPy
    then measured 200): the higher of two calibrations is the peak, rows keep a flag only if
    they are still above it, and the JSON keeps both figures."""
    import numpy as np

    from xdev.bench.cli import recalibrate

    class Calibrator:
        def __init__(self, second):
            self.first, self.second, self.calls = 115.0, second, []

        def peak_gflops(self, dtype, fresh=False):
            self.calls.append(fresh)
            return self.second if fresh else self.first

    def run(second, gflops):
        s = Settings(np.dtype("float32"), 0.1, None)
        s.peak.update({"numpy": (115.0, "calibrated FMA loop (OpenCL on the CPU)"),
                       "opencl:0:0": (115.0, "calibrated FMA loop (OpenCL on the CPU)"), "cuda:0": (9e4, "datasheet")})
        rows = [_row(_dev(k, k.split(":")[0]), s, "matmul", "n", "x", Timing(1e-3, 0.0, 3, 0.0, 0.0), int(g * 1e6))
                for k, g in (("numpy", gflops), ("opencl:0:0", 100.0), ("cuda:0", 1e5))]
        machine = {"devices": [{"device": k} for k in ("numpy", "opencl:0:0", "cuda:0")]}
        cal = Calibrator(second)
        return recalibrate(rows, s, cal, np.dtype("float32"), machine), rows, machine, s, cal

    said, rows, machine, s, cal = run(228.0, 200.0)
    assert cal.calls == [False, True] and "115 -> 228" in said
    assert rows[0]["peak_error"] is None and rows[0]["peak_fraction"] == pytest.approx(200 / 228)
    assert rows[1]["peak_fraction"] == pytest.approx(100 / 228)
    assert rows[2]["peak_error"]  # a GPU row's datasheet peak is not the CPU's calibration
    assert machine["devices"][0]["peak_calibrations"] == [115.0, 228.0] and machine["devices"][0]["peak_gflops"] == 228
    assert "peak_calibrations" not in machine["devices"][2] and s.peak["numpy"][0] == 228.0
    said, rows, machine, s, cal = run(110.0, 200.0)  # the second is no better: the flag stays
    assert said is None and rows[0]["peak_error"] and machine["devices"][0]["peak_calibrations"] == [115.0, 110.0]
    said, rows, machine, s, cal = run(228.0, 100.0)  # nothing above the peak: no second calibration
    assert said is None and cal.calls == [False] and "peak_calibrations" not in machine["devices"][0]


def test_transfer_share_is_not_clamped():
    s = Settings(__import__("numpy").dtype("float32"), 0.1, None)
    from xdev._registry import get_device
    from xdev.bench.sides import DeviceSide

    fns, finish = roundtrip_case(s, 4)(DeviceSide(get_device("numpy")))
    assert len(fns) == 2
    rows = finish([Timing(2e-3, 1e-4, 3, 0, 0), Timing(1.5e-3, 1e-4, 3, 0, 0)])  # round trip "faster"
    assert rows[1]["transfer_share"] == pytest.approx(1 - 2 / 1.5) and rows[1]["transfer_share"] < 0
    assert rows[1]["transfer_within_noise"] is False
    rows = finish([Timing(1e-3, 5e-4, 3, 0, 0), Timing(1.1e-3, 5e-4, 3, 0, 0)])
    assert rows[1]["transfer_within_noise"] is True


def test_speedups_carry_spread_and_noise_flag():
    s = Settings(__import__("numpy").dtype("float32"), 0.1, None)
    base = _row(_dev(), s, "matmul", "8x8x8", "numpy", Timing(2e-3, 1e-4, 3, 0, 0), 1024)
    fast = _row(_dev("cl", "opencl"), s, "matmul", "8x8x8", "opencl", Timing(1e-3, 1e-4, 3, 0, 0), 1024)
    same = _row(_dev("cl2", "opencl"), s, "matmul", "8x8x8", "opencl", Timing(2.05e-3, 2e-4, 3, 0, 0), 1024)
    add_speedups([base, fast, same])
    assert fast["speedup_vs_numpy"] == pytest.approx(2.0) and fast["within_noise"] is False
    assert fast["speedup_spread"] > 0
    assert same["within_noise"] is True


def test_verdicts_on_a_gpu_run():
    def row(dev, op, algo, med, spread=0.0, **kw):
        return {"device": dev, "op": op, "algorithm": algo, "median_s": med, "spread_s": spread, "shape": "s",
                "reference": False, **kw}
    rows = [row("numpy", "matmul", "numpy", 8.0, M=1024, kind="square", gflops=1.0),
            row("cuda:0", "matmul", "cuBLAS", 0.1, M=1024, kind="square", gflops=80.0),
            row("numpy", "conv2d", "gemm", 0.2, layer="total", batch=1),
            row("cuda:0", "conv2d", "cudnn", 0.16, layer="total", batch=16),
            row("cuda:0", "conv2d", "gemm", 0.48, layer="total", batch=16),
            row("cuda:0", "conv2d", "direct", 0.17, 0.05, layer="total", batch=16),
            row("cuda:0", "roundtrip", "upload+compute+download", 1.0, transfer_share=0.89,
                transfer_share_spread=0.01, transfer_within_noise=False)]
    devices = [{"device": "numpy", "backend": "numpy", "is_cpu": True},
               {"device": "cuda:0", "backend": "cuda", "is_cpu": False, "matmul_library": "cuBLAS",
                "library_algorithms": ["cudnn"]}]
    v = {x["claim"]: x for x in verdict.verdicts(rows, devices, [])}
    assert v[1]["status"] == "supported" and v[1]["numbers"][0]["ratio"] == pytest.approx(80.0)
    assert v[1]["numbers"][1]["ratio"] == pytest.approx(0.2 / (0.16 / 16))  # per image
    assert v[2]["status"] == "mixed"  # 3x over im2col, within noise of direct
    assert v[2]["numbers"][0]["ratio"] == pytest.approx(3.0) and v[2]["numbers"][1]["within_noise"]
    assert v[3]["status"] == "untested" and "OpenCL" in v[3]["reason"]
    assert v[4]["status"] == "supported"


def test_cli_rejects_bad_arguments():
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--ops", "fft"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown op(s) fft" in r.stderr


def test_an_explicit_image_size_reaches_the_pipeline_op(monkeypatch):
    """--image 224 given is honoured by the pipeline op (its CPU batch is 112 only by default)."""
    from xdev.bench import cli

    seen = {}

    def fake_rows(dev, settings, quick, batch=None, image=None):
        seen["image"] = image
        return []

    monkeypatch.setattr(cli.pipeline, "pipeline_rows", fake_rows)
    for argv, want in ((["--ops", "pipeline", "--image", "224"], 224), (["--ops", "pipeline"], None),
                       (["--ops", "pipeline", "--image", "64"], 64)):
        a = cli.parse(argv)
        a.settings = None
        cli._pipeline(a)[0].direct(None)
        assert seen["image"] == want, argv
    assert cli.parse([]).image == 224
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--image", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "argument --image: expects a positive integer" in r.stderr


class TuneDevice:
    """dev.params[key]["MR"] decides how long a call 'takes'; noise is deterministic."""
    def __init__(self, speed, jitter):
        self.params = {"gemm": {"MR": 12, "NV": 2}}
        self.speed, self.jitter, self.n = speed, jitter, 0

    def synchronize(self):
        pass

    def elapsed(self, fn, repeat):
        self.n += 1
        base = self.speed[self.params["gemm"]["MR"]]
        return [base * (1 + self.jitter * (self.n % 3 - 1))] * repeat


def test_tune_stores_only_a_winner_beyond_noise():
    pytest.importorskip("pyopencl", reason="the tuner lives in the OpenCL backend package")
    from xdev.backends.opencl.autotune import pick

    default = {"MR": 12, "NV": 2}
    cands = [{"MR": 8, "NV": 2}, {"MR": 12, "NV": 2}]  # the default among them is measured once
    lines = []
    dev = TuneDevice({12: 1.0, 8: 0.5}, jitter=0.01)
    assert pick(dev, "gemm", lambda: None, cands, default, 5, lines.append) == {"MR": 8, "NV": 2}
    assert dev.params["gemm"]["MR"] == 8 and "beyond noise" in lines[-1]
    assert sum("median" in ln and "spread" in ln for ln in lines) == 2
    assert any("built-in default, the baseline" in ln for ln in lines)
    lines.clear()
    dev = TuneDevice({12: 1.0, 8: 0.97}, jitter=0.1)  # 3% faster, 10% jitter: a fluke
    assert pick(dev, "gemm", lambda: None, cands, default, 5, lines.append) is None
    assert dev.params["gemm"] == default and "within noise" in lines[-1]


class _CpuDev:
    is_cpu = True


def test_cpu_peak_ignores_a_calibration_that_did_not_vectorize():
    # pip's PoCL 3.0 on an AVX-512 AMD CPU calibrates ~24 GFLOP/s where the formula gives
    # ~330: the formula must win, or every "% peak" reads several hundred.
    from xdev.bench import machine as mach

    cpu = {"simd": "avx512", "max_mhz": 2600, "fma": True, "physical_cores": 2}
    formula, _ = mach.cpu_peak_formula(cpu, "float32")
    assert formula == pytest.approx(2 * 16 * 2 * 2 * 2.6)
    peak, how = mach.peak_gflops(_CpuDev(), "float32", cpu, 24.0)
    assert peak == formula and "24 GFLOP/s" in how and "vectorize" in how
    # A calibration near (or above: turbo clocks) the formula is the better figure.
    peak, how = mach.peak_gflops(_CpuDev(), "float32", cpu, 501.0)
    assert peak == 501.0 and how.startswith("calibrated")
    assert mach.peak_gflops(_CpuDev(), "float32", {}, None) == (None, "unknown")


@pytest.mark.parametrize("args, says", [
    (["--sizes", "abc"], "--sizes: expects comma-separated positive integers"),
    (["--sizes=-5"], "--sizes: expects comma-separated positive integers"),
    (["--sizes", "256,0"], "'0' not one"),
    (["--batch=-1"], "--batch: expects a positive integer (e.g. 16); received '-1'"),
    (["--batch", "x"], "--batch: expects a positive integer"),
    (["--repeat", "0"], "--repeat: expects a positive integer"),
    (["--image", "0"], "--image: expects a positive integer"),
])
def test_cli_bad_numbers_are_clear_errors(args, says):
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "--backends", "numpy", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_cli_checks_output_paths_before_measuring(tmp_path):
    """A path that cannot be written fails at once (exit 2, nothing measured, no file left)."""
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    cases = [(["--json", str(tmp_path / "missing" / "r.json")], "does not exist"),
             (["--json", str(tmp_path)], "that is a folder"),
             (["--json", str(plain / "r.json")], "does not exist"),
             (["--plot", str(tmp_path / "missing" / "r.png")], "does not exist"),
             (["--plot", str(tmp_path / "r.nosuchformat")], "not one matplotlib writes")]
    for extra, says in cases:
        r = subprocess.run([sys.executable, "-m", "xdev.bench", "--backends", "numpy", "--ops", "matmul",
                            "--sizes", "8", "--repeat", "1", *extra], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
        assert "matmul (C = A @ B" not in r.stdout  # nothing was measured
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]  # the check leaves nothing behind
    from xdev.bench.cli import check_output

    good = tmp_path / "ok.json"
    assert check_output("--json", str(good)) is None and not good.exists()
    assert check_output("--json", str(plain)) is None and plain.read_text() == "x"  # untouched


def test_compare_refuses_deep_or_malformed_json(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SystemExit, match="nests its JSON too deeply"):
        compare.main([str(deep), str(deep)])
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps({"results": [{"op": "matmul"}]}))
    with pytest.raises(SystemExit, match=r"results\[0\] lacks shape"):
        compare.main([str(rows), str(rows)])
    rows.write_text(json.dumps({"results": [7]}))
    with pytest.raises(SystemExit, match=r"results\[0\] lacks op"):
        compare.main([str(rows), str(rows)])
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(SystemExit, match="is not JSON"):
        compare.main([str(bad), str(bad)])
    r = subprocess.run([sys.executable, "-m", "xdev.bench", "compare", str(deep), str(deep)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "too deeply" in r.stderr and "Traceback" not in r.stderr


def _render(width: int, draw) -> str:
    import io

    from rich.console import Console

    out = io.StringIO()
    draw(Console(width=width, file=out, color_system=None, force_terminal=False))
    return out.getvalue()


def _wide_rows() -> list[dict]:
    """Rows with the longest labels and values a real run prints (GPU numerics, torch, skinny)."""
    base = {"dtype": "float32", "repeats": 9, "peak_fraction": 0.912, "peak_error": None, "build_s": 12.345,
            "first_call_s": 13.0, "speedup_vs_numpy": 123.456, "speedup_spread": 10.987, "within_noise": True,
            "reference": False}
    rows = []
    for dev, algo in (("numpy", "numpy"), ("opencl:1:0", "opencl"), ("cuda:0", "cuBLAS"),
                      ("torch:cuda:0", "torch (reference)")):
        for shape, (M, K, N) in (("4096x4096x4096", (4096,) * 3), ("32x4096x4096", (32, 4096, 4096))):
            rows.append({**base, "op": "matmul", "device": dev, "backend": dev.split(":")[0], "algorithm": algo,
                         "shape": shape, "M": M, "K": K, "N": N, "kind": "square" if M == N else "skinny",
                         "median_s": 1.23456, "spread_s": 0.98765, "gflops": 123456.7})
    for dev, algo, num in (("cuda:0", "cudnn", "strict-fp32, no Winograd/FFT, nchw->nhwc"),
                           ("opencl:1:0", "direct", None)):
        for layer in ("conv5_3", "total"):
            rows.append({**base, "op": "conv2d", "device": dev, "backend": dev.split(":")[0], "algorithm": algo,
                         "layer": layer, "geometry": "512>512@14", "batch": 16, "shape": "s",
                         "median_s": 12.3456, "spread_s": 1.2345, "gflops": 98765.4,
                         **({"numerics": num, "numeric_mode": "strict-fp32"} if num else {})})
    for alg in ("host-to-device pageable, staged", "device-to-host pinned"):
        rows.append({**base, "op": "transfer", "device": "opencl:1:0", "backend": "opencl", "algorithm": alg,
                     "shape": "67108864 B", "bytes": 1 << 26, "median_s": 0.0123, "spread_s": 0.00456,
                     "gbps": 5.4321, "gflops": None})
    for alg in ("compute only", "upload+compute+download"):
        rows.append({**base, "op": "roundtrip", "device": "opencl:1:0", "backend": "opencl", "algorithm": alg,
                     "shape": "2048x2048x2048", "median_s": 0.5678, "spread_s": 0.1234, "gflops": 31.2,
                     "transfer_share": -0.123, "transfer_share_spread": 0.456, "transfer_within_noise": True})
    return rows


def test_tables_fit_80_columns_without_cutting_values():
    from xdev.bench import report

    rows = _wide_rows()
    narrow = _render(80, lambda c: report.tables(c, rows))
    assert max(len(line) for line in narrow.splitlines()) <= 80, narrow
    assert "…" not in narrow
    assert "(reference)" not in narrow and "(published)" not in narrow  # abbreviated: "torch ref", "(pub.)"
    for value in ("1234.6", "12345.6", "123456.7", "98765.4", "123.46", "torch ref", "cuda:0",
                  "torch:cuda:0", "opencl:1:0", "conv5_3", "5.43", "-12%"):
        assert value in narrow, (value, narrow)
    assert "build s" not in narrow and "% peak" not in narrow  # the first columns to go
    assert "4096^3" in narrow and "32x4096x4096" in narrow  # square shapes abbreviated, others kept
    wide = _render(200, lambda c: report.tables(c, rows))
    assert "build s" in wide and "% peak" in wide and "12.35" in wide and "4096x4096x4096" in wide
    assert "123.46±10.99 ~" in wide and "strict-fp32, no Winograd/FFT, nchw->nhwc" in wide
    assert "torch (reference)" in wide and "dual Xeon E5-2630 v3 (published)" in wide


def test_dask_summary_fits_80_columns_without_cutting_values():
    from xdev.bench import dask_bench

    rows = [{"op": "matmul", "shape": "4096^2 in 1024^2 chunks", "one_process_s": 0.70213, "dask_s": 0.85791,
             "speedup": 0.8184, "ideal_speedup": 1, "efficiency": 0.8184, "efficiency_spread": 0.0412,
             "dask_overhead": 0.2219, "tasks": 16, "target": "within noise"},
            {"op": "conv2d", "shape": "VGG-16 conv layers, batch 16 at 224", "one_process_s": 12.3456,
             "dask_s": 11.2345, "speedup": 1.0989, "ideal_speedup": 1, "efficiency": 1.0989,
             "efficiency_spread": 0.0712, "dask_overhead": -0.09, "tasks": 112, "target": "met"}]
    narrow = _render(80, lambda c: dask_bench.table(rows, c))
    assert max(len(line) for line in narrow.splitlines()) <= 80 and "…" not in narrow, narrow
    for value in ("0.702", "0.858", "0.82±0.04", "12.346", "11.235", "1.10±0.07", "within noise", "met",
                  "4096^2 / 1024^2", "VGG-16 b16 @224", "target >= 0.80"):
        assert value in narrow, (value, narrow)
    wide = _render(200, lambda c: dask_bench.table(rows, c))
    for value in ("4096^2 in 1024^2 chunks", "VGG-16 conv layers, batch 16 at 224", "22.2%", "-9.0%", "112"):
        assert value in wide, (value, wide)


def test_lecture_table_names_the_torch_row_once():
    from xdev.bench import report

    totals = [{"device": "torch:cpu", "backend": "torch", "algorithm": "torch (reference)", "reference": True,
               "batch": 1, "median_s": 0.5}, {"device": "numpy", "backend": "numpy", "algorithm": "gemm",
                                              "reference": False, "batch": 1, "median_s": 0.6}]
    text = _render(80, lambda c: report.lecture(c, totals))
    assert "torch (reference)" in text and "torch torch" not in text and "xdev numpy gemm" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_busy_machine_makes_measured_verdicts_inconclusive():
    before = {"time": 0.0, "cpus": 2, "loadavg": [0.1, 0.1, 0.1], "self_cpu_s": 0.0,
              "stat": {"busy": 0, "idle": 0, "steal": 0}}
    quiet = noise.summarize_load(before, dict(before, time=10.0, self_cpu_s=10.0,
                                              stat={"busy": 1100, "idle": 900, "steal": 0}))
    assert quiet["busy"] is False and quiet["busy_share_limit"] == noise.BUSY_SHARE
    busy = noise.summarize_load(before, dict(before, time=10.0, self_cpu_s=10.0,
                                             stat={"busy": 1700, "idle": 300, "steal": 0}))
    assert busy["busy"] is True and "35% of the 2 CPUs" in busy["busy_reason"]
    found = [{"claim": 3, "status": "supported", "numbers": [{"ratio": 1.5}]},
             {"claim": 1, "status": "untested", "numbers": []}]
    verdict.judge_load(found, quiet)
    assert [v["status"] for v in found] == ["supported", "untested"]
    verdict.judge_load(found, busy)
    assert found[0]["status"] == "inconclusive (busy machine)" and found[0]["measured_status"] == "supported"
    assert found[1]["status"] == "untested" and "measured_status" not in found[1]


def test_a_claim_nothing_measured_stays_untested_on_a_busy_machine():
    """Busy or not, a claim without numbers is "untested" with its reason: on CPUs only
    (claims 1, 2: no GPU here), and with a GPU and a CPU that ran no workload in common."""
    busy = {"busy": True, "busy_reason": "others used 60% of the 2 CPUs"}
    cpu_rows = [_mm("numpy", "numpy", 0.10, n=512), _mm("opencl:1:0", "opencl", 0.12, n=512)]
    cpus = [{"device": "numpy", "backend": "numpy", "is_cpu": True},
            {"device": "opencl:1:0", "backend": "opencl", "is_cpu": True}]
    gpu = {"device": "opencl:0:0", "backend": "opencl", "is_cpu": False}
    skipped = [{"backend": "opencl:0:0", "present": True, "reason": "present but not measured"}]
    found = {v["claim"]: v for v in verdict.judge_load(verdict.verdicts(cpu_rows, cpus, skipped), busy)}
    assert found[1]["status"] == "untested" and found[1]["reason"].startswith("no GPU here")
    assert found[2]["status"] == "untested" and "no GPU with a convolution library" in found[2]["reason"]
    assert found[3]["status"] == "inconclusive (busy machine)" and found[3]["measured_status"] == "supported"
    # a GPU in the run, but no size both it and a CPU ran: nothing to compare, and it says so
    rows = cpu_rows + [_mm("opencl:0:0", "opencl", 0.01, n=4096)]
    found = {v["claim"]: v for v in verdict.judge_load(verdict.verdicts(rows, cpus + [gpu], []), busy)}
    assert found[1]["status"] == "untested" and not found[1]["numbers"] and found[1]["reason"]
    assert "measured_status" not in found[1] and "busy" not in found[1]


def test_a_busy_loop_beside_the_run_makes_it_inconclusive(tmp_path):
    """Busy loops on half the CPUs (another process at 100% of one of two cores, ~50% of the
    machine): the load sampling sees them, and the JSON and the printed verdicts say so."""
    from test_bench_backends import fake_env

    n = max(1, (os.cpu_count() or 1) // 2)
    loops = [subprocess.Popen([sys.executable, "-c", "import time\nt = time.time() + 120\nwhile time.time() < t: pass"])
             for _ in range(n)]
    try:
        r = subprocess.run([sys.executable, "-m", "xdev.bench", "--backends", "numpy,toy", "--ops", "matmul",
                            "--sizes", "256,512", "--repeat", "5", "--json", str(tmp_path / "r.json")],
                           capture_output=True, text=True, timeout=300, env=fake_env("toy"))
    finally:
        for p in loops:
            p.kill()
            p.wait()
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    load = doc["run"]["load"]
    assert load["busy"] is True and load["others_share"] > noise.BUSY_SHARE, load
    claim3 = next(v for v in doc["verdicts"] if v["claim"] == 3)
    assert claim3["status"] == "inconclusive (busy machine)" and claim3["numbers"], claim3
    assert claim3["measured_status"] in ("supported", "contradicted", "within noise", "mixed")
    assert "claim 3 inconclusive (busy machine)" in r.stdout and "rerun on a quiet machine" in r.stdout


def test_compare_plot_is_a_log_axis_around_one_with_positive_bars():
    import matplotlib.pyplot as plt

    key = ("matmul", "", "1024x1024x1024", "float32", "numpy", "numpy")
    shared = [{"key": key, "rows": [], "ratios": [(0.5, 0.9, False)]},   # spread larger than the ratio
              {"key": key[:2] + ("2048x2048x2048",) + key[3:], "rows": [], "ratios": [(2.0, 0.1, False)]}]
    fig = compare.figure(shared, ["A", "B"], ["a.json", "b.json"])
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lo, hi = ax.get_xlim()
    assert 0 < lo < 0.5 and hi > 2.0 and lo * hi == pytest.approx(1.0)  # symmetric around 1
    bars = [b for b in ax.patches]
    assert len(bars) == 2 and all(min(b.get_x(), b.get_x() + b.get_width()) > 0 for b in bars)
    assert {round(b.get_x() + b.get_width(), 6) for b in bars} == {0.5, 2.0}  # from 1 to each ratio
    import numpy as np

    ends = [np.asarray(seg)[:, 0] for c in ax.collections for seg in c.get_segments()]
    assert ends and all((x > 0).all() for x in ends)  # error bars stay positive
    assert min(x.min() for x in ends) == pytest.approx(0.5 / (1 + 0.9 / 0.5))
    plt.close(fig)


def test_plot_is_a_grid_a_person_can_read():
    import matplotlib.pyplot as plt

    from xdev.bench import report

    rows = [r for r in _wide_rows() if r["op"] in ("matmul", "conv2d", "transfer", "roundtrip")]
    fig = report.figure(rows, None)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4
    w, h = fig.get_size_inches() * 110
    assert w <= 1600 and h <= 1200 and w / h < 2  # 2x2, not four panels in one 2860x550 row
    plt.close(fig)


def test_progress_lines_and_heartbeats():
    import threading
    import time

    from xdev.bench.progress import Ticker, with_notice

    lines: list[str] = []
    t = Ticker(write=lines.append, every_s=0.2)
    with t.running():
        t.doing("conv2d conv1_1 on opencl:0:0, round 3")
        time.sleep(0.75)  # a long workload: heartbeats every 0.2 s
        t.finished("conv2d conv1_1", ["numpy", "opencl:0:0"])
    beats = [ln for ln in lines if "still measuring conv2d conv1_1 on opencl:0:0, round 3" in ln]
    assert len(beats) >= 2 and lines[-1].endswith("conv2d conv1_1: done (numpy, opencl:0:0)")
    assert all(ln.startswith("[") and " s] " in ln for ln in lines)
    assert not any(th.name == "xdev-bench-ticker" for th in threading.enumerate())  # stopped

    said: list[str] = []
    assert with_notice(lambda: time.sleep(0.3) or 7, said.append, "proving devices", after_s=0.05) == 7
    assert said == ["proving devices"]  # once, while it ran
    assert with_notice(lambda: 8, said.append, "proving devices", after_s=1.0) == 8 and len(said) == 1


def _mm(dev, algo, med, n=4096, kind="square", mode=None, numerics=None, **kw):
    row = {"device": dev, "op": "matmul", "algorithm": algo, "median_s": med, "spread_s": med * 0.01,
           "shape": f"{n}x{n}x{n}", "M": n, "K": n, "N": n, "kind": kind, "gflops": 2 * n**3 / med / 1e9,
           "reference": False, "dtype": "float16" if mode == "fp16" else "float32", **kw}
    if mode:
        row["numeric_mode"] = mode
    if numerics:
        row["numerics"] = numerics
    return row


GPU_DEVICES = [{"device": "cuda:0", "backend": "cuda", "is_cpu": False, "matmul_library": "cuBLAS",
                "library_algorithms": ["cudnn"]}]


def test_claim3_on_a_gpu_shows_both_halves_with_opencl_tensor_core_rows():
    rows = [_mm("cuda:0", "cuBLAS", 0.0025, mode="strict-fp32"), _mm("opencl:0:0", "opencl", 0.0030),
            _mm("cuda:0", "cuBLAS tf32", 0.0005, kind="tensor-cores", mode="tf32"),
            _mm("opencl:0:0", "opencl tf32", 0.0008, kind="tensor-cores", mode="tf32",
                numerics="tf32, tensor cores (mma.sync through inline PTX)"),
            _mm("cuda:0", "cuBLAS fp16", 0.0002, kind="tensor-cores", mode="fp16"),
            _mm("opencl:0:0", "opencl fp16", 0.0004, kind="tensor-cores", mode="fp16",
                numerics="fp16, tensor cores (mma.sync through inline PTX)")]
    devices = GPU_DEVICES + [{"device": "opencl:0:0", "backend": "opencl", "is_cpu": False, "tensor_cores": True}]
    v = {x["claim"]: x for x in verdict.verdicts(rows, devices, [])}[3]
    nums = v["numbers"]
    assert [n["mode"] for n in nums] == ["strict-fp32", "tf32", "fp16"]
    assert all(n["like_for_like"] for n in nums) and v["status"] == "supported"
    assert nums[0]["ratio"] == pytest.approx(1.2) and "units against units" in nums[0]["what"]
    assert nums[1]["ratio"] == pytest.approx(1.6) and "tensor cores on both" in nums[1]["what"]
    assert "inline PTX" in v["summary"] and "not like-for-like" not in v["summary"]


def test_claim3_on_a_gpu_without_opencl_tensor_cores_says_why():
    rows = [_mm("cuda:0", "cuBLAS", 0.0025, mode="strict-fp32"),
            _mm("opencl:0:0", "opencl", 0.0030, mode="strict-fp32", numerics="strict-fp32, FMA units"),
            _mm("cuda:0", "cuBLAS tf32", 0.0005, kind="tensor-cores", mode="tf32"),
            _mm("opencl:0:0", "opencl tf32", 0.0029, kind="tensor-cores", mode="strict-fp32",
                numerics="strict-fp32, FMA units"),
            _mm("cuda:0", "cuBLAS fp16", 0.0002, kind="tensor-cores", mode="fp16")]
    devices = GPU_DEVICES + [{"device": "opencl:0:0", "backend": "opencl", "is_cpu": False,
                              "tensor_core_reason": "the driver does not accept inline PTX"}]
    v = {x["claim"]: x for x in verdict.verdicts(rows, devices, [])}[3]
    nums = v["numbers"]
    assert [n["mode"] for n in nums] == ["strict-fp32", "tf32", "fp16"]
    assert nums[0]["like_for_like"] and not nums[1]["like_for_like"] and not nums[2]["like_for_like"]
    # TF32 and float16 stand beside OpenCL's best row (0.0029 s), with the reason
    assert nums[1]["ratio"] == pytest.approx(0.0029 / 0.0005) and nums[1]["a"] == "opencl:0:0 opencl tf32"
    assert "no standard way to reach the tensor cores" in nums[1]["why_not"]
    assert "strict-fp32, FMA units" in nums[1]["why_not"] and "inline PTX" in nums[1]["why_not"]
    assert v["status"] == "supported"  # from the float32 half alone: 1.2x, beyond noise
    assert "not like-for-like" in v["summary"]


def test_claim3_on_the_cpu_flags_different_instruction_sets():
    rows = [_mm("numpy", "numpy", 0.10, n=2048, isa="AVX2", isa_source="openblas Haswell kernels"),
            _mm("opencl:0:0", "opencl", 0.08, n=2048, isa="AVX-512", isa_source="compiler target")]
    devices = [{"device": "numpy", "backend": "numpy", "is_cpu": True},
               {"device": "opencl:0:0", "backend": "opencl", "is_cpu": True}]
    v = {x["claim"]: x for x in verdict.verdicts(rows, devices, [])}[3]
    n = v["numbers"][0]
    assert n["like_for_like"] is False and n["isa_a"] == "AVX-512" and n["isa_b"] == "AVX2"
    assert "different instruction sets" in n["why_not"] and "Haswell" in n["why_not"]
    assert v["status"] == "untested" and "no like-for-like comparison" in v["reason"]
    rows[1]["isa"] = "AVX2"
    v = {x["claim"]: x for x in verdict.verdicts(rows, devices, [])}[3]
    assert v["numbers"][0]["like_for_like"] is True and v["status"] == "contradicted"


def test_numeric_mode_block_sets_and_restores_tf32(monkeypatch):
    from xdev.contract import env

    monkeypatch.delenv("XDEV_CUDA_TF32", raising=False)
    monkeypatch.setenv("XDEV_OPENCL_TF32", "0")
    with env.numeric_mode(True):
        assert env.cuda_tf32() and env.opencl_tf32()  # OpenCL follows CUDA's switch inside
    assert not env.cuda_tf32() and os.environ["XDEV_OPENCL_TF32"] == "0"
    monkeypatch.setenv("XDEV_CUDA_TF32", "1")
    with env.numeric_mode(False):
        assert not env.cuda_tf32() and not env.opencl_tf32()
    assert env.cuda_tf32()


def _reference_timing():
    import importlib.util

    spec = importlib.util.spec_from_file_location("reference_timing_under_test", ROOT / "bench" / "reference_timing.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reference_timing_summary_pairs_neighbours_and_sets_busy_runs_aside():
    """bench/reference_timing.py: NumPy beside torch over NumPy alone per pair of neighbouring
    runs (A B B A: pairs 1-2 and 3-4); the wall-time ratio over the quiet runs when the run's own
    load check called one busy."""
    rt = _reference_timing()

    def doc(mm_ms, busy=False):
        rows = [{"device": "numpy", "op": "matmul", "kind": "square", "M": 4096, "shape": "4096x4096x4096",
                 "median_s": mm_ms / 1e3, "spread_s": mm_ms / 1e5, "isa": "AVX2"}]
        return {"results": rows, "run": {"load": {"busy": busy, "others_share": 0.4 if busy else 0.01},
                                          "settle": {"total_s": 1.0, "waits": 10}}}
    runs = [("without", {"wall_s": 200.0, "doc": doc(2000.0, busy=True)}),
            ("with torch", {"wall_s": 110.0, "doc": doc(800.0)}),
            ("with torch", {"wall_s": 120.0, "doc": doc(780.0)}),
            ("without", {"wall_s": 100.0, "doc": doc(780.0)})]
    text = rt.summary(runs)
    assert "with/without, mean wall time (the 3 quiet runs" in text and "1.15x" in text and "-> met" in text
    pair = [ln for ln in text.splitlines() if ln.strip().startswith("runs ")]
    assert len(pair) == 2 and "runs 1-2" in pair[0] and "[busy: without]" in pair[0]
    assert "runs 3-4" in pair[1] and "1.000x±0.007 ~" in pair[1] and "busy" not in pair[1]
