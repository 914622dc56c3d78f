"""python -m xdev.bench --dask: a tiny run on a real (spawned) worker process."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("distributed", reason='the --dask benchmark needs dask: pip install "xdev[dask]"')


def test_bench_dask_runs_on_worker_processes(tmp_path):
    """python -m xdev.bench --dask: real worker processes (spawned), one row per workload."""
    out = tmp_path / "dask.json"
    r = subprocess.run(
        [sys.executable, "-m", "xdev.bench", "--dask", "1", "--backends", "numpy", "--sizes", "96",
         "--dask-chunk", "32", "--image", "8", "--batch", "2", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(out.read_text())
    rows = {(row["op"], row.get("layer")): row for row in doc["results"]}
    assert doc["config"]["workers"] == 1 and doc["config"]["chunk"] == 32
    mm = rows[("matmul", None)]
    assert mm["shape"] == "96^2 in 32^2 chunks" and mm["tasks"] > 0
    assert 0 < mm["worker_busy"] <= 1.5 and mm["worker_compute_s"] > 0
    assert mm["dask_s"] > 0 and mm["efficiency"] == pytest.approx(mm["speedup"] / mm["ideal_speedup"])
    assert len([k for k in rows if k[0] == "conv2d"]) == 14  # 13 layers and the total
    assert "efficiency" in r.stdout
