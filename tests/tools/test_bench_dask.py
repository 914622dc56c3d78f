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
    assert doc["schema"]["name"] == "xdev.bench" and doc["run"]["argv"][:2] == ["--dask", "1"]
    assert doc["run"]["load"]["wall_s"] > 0
    cluster = doc["config"]["cluster"]
    assert cluster["workers"] == 1 and cluster["threads_per_worker"] == [1] and cluster["dask"]
    mm = rows[("matmul", None)]
    assert mm["shape"] == "96^2 in 32^2 chunks" and mm["tasks"] > 0
    assert 0 < mm["worker_busy"] <= 1.5 and mm["worker_compute_s"] > 0
    assert mm["dask_s"] > 0 and mm["efficiency"] == pytest.approx(mm["speedup"] / mm["ideal_speedup"])
    assert len([k for k in rows if k[0] == "conv2d"]) == 14  # 13 layers and the total
    assert mm["target"] in ("met", "not met", "within noise") and mm["efficiency_spread"] >= 0
    assert len(mm["pair_ratios"]) == len(mm["dask_runs_s"]) == len(mm["dask_in_place_runs_s"]) == 1
    # One process timed alone, once before the cluster started and once after it closed, and
    # beside the idle cluster (alternating with Dask); the headline is against it alone.
    assert len(mm["one_process_runs_s"]) == 2 and len(mm["one_process_beside_runs_s"]) == 1
    assert mm["one_process_s"] == pytest.approx(sum(mm["one_process_runs_s"]) / 2)
    assert {mm["one_process_before_s"], mm["one_process_after_s"]} == set(mm["one_process_runs_s"])
    assert mm["efficiency_beside"] == pytest.approx(mm["one_process_beside_s"] / mm["dask_s"] / mm["ideal_speedup"])
    total = rows[("conv2d", "total")]
    assert len(total["one_process_runs_s"]) == 2 and total["one_process_s"] > 0
    assert mm["dask_in_place_s"] > 0 and mm["moving_blocks_share"] < 1
    assert mm["efficiency_in_place"] == pytest.approx(mm["one_process_s"] / mm["dask_in_place_s"] / mm["ideal_speedup"])
    assert "efficiency" in r.stdout and "target >= 0.80" in r.stdout
    # xdev.dask.local_cluster: Dask's housekeeping quieted on the worker, every core's BLAS threads
    import xdev.dask as xd

    assert cluster["dask_config_set"] == xd.COMPUTE_CONFIG
    (seen,) = cluster["worker_dask_config"].values()
    assert seen == xd.COMPUTE_CONFIG and "COMPUTE_CONFIG" in r.stdout
    (threads,) = cluster["worker_threads"].values()
    if "blas" in threads and xd._cores() > 1:  # threadpoolctl, in the bench and test extras
        assert all(b["threads"] > 1 for b in threads["blas"])  # one worker: every core's threads
    (worker_env,) = cluster["worker_env"].values()
    assert "MALLOC_TRIM_THRESHOLD_" not in worker_env


def test_bench_dask_defaults_keeps_dasks_own_configuration(tmp_path):
    import dask

    out = tmp_path / "dask.json"
    r = subprocess.run(
        [sys.executable, "-m", "xdev.bench", "--dask", "1", "--dask-defaults", "--ops", "matmul", "--sizes", "64",
         "--dask-chunk", "32", "--repeat", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    cluster = json.loads(out.read_text())["config"]["cluster"]
    assert cluster["dask_config_set"] == {} and "Dask's own configuration" in r.stdout
    (seen,) = cluster["worker_dask_config"].values()
    assert seen == {k: dask.config.get(k) for k in seen}  # as in this process: Dask's, or a YAML file's


def test_target_verdict_counts_the_spread():
    from xdev.bench.dask_bench import _verdict

    assert _verdict(0.90, 0.05) == "met"
    assert _verdict(0.83, 0.05) == "within noise"
    assert _verdict(0.70, 0.05) == "not met"


def test_a_dask_run_is_settled_before_the_next():
    """The graph of every run is the same, so are its keys: a rerun while the scheduler still
    held the last result would find it instead of computing it."""
    import dask.array as da
    import distributed

    from xdev.bench.dask_bench import _DaskRun, _held

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        x = client.persist(da.ones((64, 64), chunks=32))
        run = _DaskRun(client, distributed, lambda: (x @ x.T) + 1, [x])
        run()
        keys = list(run.keys)
        assert len(keys) == 4
        run.settle()
        assert client.run_on_scheduler(_held, keys) == 0 and run.keys == []


def test_every_dask_run_starts_with_one_copy_of_each_input():
    """Workers keep the blocks they fetched; settle drops those copies, so every timed run
    moves the blocks it needs (not some runs, by chance of Dask's memory manager)."""
    import dask.array as da
    import distributed

    from xdev.bench.dask_bench import _DaskRun, _replicas

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        client.amm.stop()  # as the benchmark does: copies are dropped by settle, not on a timer
        w0, w1 = sorted(client.scheduler_info()["workers"])
        x = client.persist(da.ones((64, 64), chunks=16), workers=[w0])
        y = client.persist(da.zeros((64, 64), chunks=16), workers=[w1])  # other keys than x
        distributed.wait([x, y])
        keep = _DaskRun(client, distributed, lambda: x + y, [x, y], drop_copies=False)
        run = _DaskRun(client, distributed, lambda: x + y, [x, y])
        assert client.run_on_scheduler(_replicas, run.inputs) == 0
        keep()
        keep.settle()
        copied = client.run_on_scheduler(_replicas, run.inputs)
        assert copied > 0  # each sum of two blocks fetched one of them from the other worker
        run()  # finds the copies in place
        run.settle()
        assert client.run_on_scheduler(_replicas, run.inputs) == 0
        assert all(len(w) == 1 for w in client.who_has([x, y]).values())
