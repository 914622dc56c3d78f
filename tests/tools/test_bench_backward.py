"""python -m xdev.bench --ops backward: rows for each pass, totals, the lecture's training table."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_backward_op_json_and_tables(tmp_path):
    # NumPy only: the bench code is the same for every backend, and PoCL's kernel builds are slow.
    backends = ["numpy"]
    cmd = [sys.executable, "-m", "xdev.bench", "--ops", "conv2d,backward", "--quick", "--image", "16",
           "--repeat", "2", "--backends", ",".join(backends), "--json", str(tmp_path / "r.json")]
    env = {k: v for k, v in os.environ.items() if k != "XDEV_BACKEND"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [p["ms"] for p in doc["published_train"]["rows"]] == [128.6, 358.5, 8495.0]
    res = doc["results"]
    assert all(x.get("pass") == "forward" for x in res if x["op"] == "conv2d")
    for dev in backends:
        rows = [x for x in res if x["op"] == "conv2d_backward" and x["backend"] == dev]
        layers = [x for x in rows if x["layer"] != "total"]
        assert len(layers) == 13 * 3
        assert {x["pass"] for x in layers} == {"forward", "backward-input", "backward-weight"}
        assert all(x["median_s"] > 0 and x["repeats"] == 2 for x in layers)
        tot = {x["pass"]: x for x in rows if x["layer"] == "total"}
        assert set(tot) == {"forward", "backward-input", "backward-weight", "forward+backward"}
        both = tot["forward+backward"]
        parts = [tot[p]["median_s"] for p in ("forward", "backward-input", "backward-weight")]
        assert abs(both["median_s"] - sum(parts)) < 1e-12
        assert abs(both["backward_over_forward"] - (parts[1] + parts[2]) / parts[0]) < 1e-9
        fwd = sum(x["median_s"] for x in layers if x["pass"] == "forward")
        assert abs(tot["forward"]["median_s"] - fwd) < 1e-12
    assert "forward + backward table" in r.stdout and "8495" not in r.stdout  # per image: 530.9
    assert "530.9" in r.stdout and ("backward / forward" in r.stdout or "bwd/fwd" in r.stdout)
