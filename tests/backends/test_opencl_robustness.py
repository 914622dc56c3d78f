"""OpenCL robustness: the device proof in a child process, the memory pool cap, index
limits, the tuning cache; never an abort, an unbounded pool or a crash on a bad file."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xdev
from availability import backend_status, require, usable_backend
from child import child_env, run_child
from xdev.contract import json_store

BACKENDS = ("numpy", "opencl")


# -- OpenCL device errors, pool, synchronize --------------------------------------------------
def test_selector_index_out_of_range_says_so():
    require("opencl")
    from xdev.backends.opencl.discovery import _select

    with pytest.raises(ValueError, match="platform index 7 is out of range"):
        _select("7:7")
    with pytest.raises(ValueError, match="device index 7 is out of range on platform 0"):
        _select("0:7")


def test_fp16_peak_calibration_does_not_overrun_its_buffer():
    dev = require("opencl")
    # The calibration buffer holds one compute-type value per work-item; run it in a child
    # too, so a heap overrun that only corrupts memory still fails this test at exit.
    gf = dev.peak_gflops(np.float16, iters=8, repeat=1)
    assert gf > 0
    r = run_child(f"import numpy as np, xdev\nfrom xdev._registry import get_device\n"
             f"d = get_device({dev.key!r})\nprint(d.peak_gflops(np.float16, iters=8, repeat=1))\n"
             f"import gc; gc.collect()", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_fresh_peak_calibration_keeps_the_higher_figure():
    dev = require("opencl")
    saved = dict(dev._peak)
    try:
        dev._peak[np.dtype(np.float32)] = 1e9  # no real calibration reaches this
        assert dev.peak_gflops(np.float32) == 1e9  # cached
        assert dev.peak_gflops(np.float32, fresh=True) == 1e9  # measured again, the higher kept
        dev._peak.pop(np.dtype(np.float32))
        assert 0 < dev.peak_gflops(np.float32, fresh=True) < 1e9
    finally:
        dev._peak.clear()
        dev._peak.update(saved)


def test_memory_pool_keeps_held_bytes_under_its_cap(monkeypatch):
    dev = require("opencl")
    saved = dev.pool_cap
    try:
        dev.pool_cap = 1 << 20
        arrays = [xdev.asarray(np.ones(300_000, np.float32), backend=dev.key) for _ in range(8)]
        del arrays
        xdev.asarray(np.ones(10, np.float32), backend=dev.key)  # an allocation applies the cap
        assert dev.pool.managed_bytes - dev.pool.active_bytes <= dev.pool_cap
        arrays = [xdev.asarray(np.ones(300_000, np.float32), backend=dev.key) for _ in range(8)]
        del arrays
        xdev.synchronize()  # so does synchronize
        assert dev.pool.managed_bytes - dev.pool.active_bytes <= dev.pool_cap
    finally:
        dev.pool_cap = saved


def test_memory_past_the_device_size_is_a_memory_error():
    dev = require("opencl")
    keep = xdev.asarray(np.ones(1000, np.float32), backend=dev.key)
    saved = dev.global_mem
    try:
        dev.global_mem = dev.pool.active_bytes + (1 << 20)
        with pytest.raises(MemoryError, match="allocating 4194304 bytes"):
            dev.alloc(4 << 20)
        np.testing.assert_array_equal(keep.numpy(), 1)  # earlier arrays intact
    finally:
        dev.global_mem = saved


def test_pool_cap_variable(monkeypatch):
    from xdev.contract.env import opencl_pool_cap as pool_cap

    monkeypatch.delenv("XDEV_OPENCL_POOL_CAP", raising=False)
    assert pool_cap(16 << 30) == 1 << 30 and pool_cap(1 << 30) == 1 << 28
    for v, n in (("0", 0), ("512M", 512 << 20), ("2G", 2 << 30), ("1000", 1000), ("64KiB", 64 << 10)):
        monkeypatch.setenv("XDEV_OPENCL_POOL_CAP", v)
        assert pool_cap(1 << 30) == n
    monkeypatch.setenv("XDEV_OPENCL_POOL_CAP", "lots")
    with pytest.raises(ValueError, match="XDEV_OPENCL_POOL_CAP='lots' is not a size"):
        pool_cap(1 << 30)


def test_synchronize_without_argument_waits_for_every_used_device(monkeypatch):
    require("opencl")
    from xdev._registry import get_device

    xdev.asarray([1.0], backend="opencl")
    seen = []
    for dev in (get_device("numpy"), get_device("opencl")):
        monkeypatch.setattr(dev, "synchronize", lambda d=dev: seen.append(d.key), raising=False)
    with xdev.use_backend("numpy"):
        xdev.synchronize()
    assert get_device("opencl").key in seen and "numpy" in seen
    seen.clear()
    xdev.synchronize("opencl")
    assert seen == [get_device("opencl").key]


def test_stale_pocl_cache_entry_is_rebuilt(monkeypatch):
    """A program without the asked-for kernel (what a half-written PoCL cache entry gives:
    INVALID_KERNEL_NAME) is built again instead of failing."""
    import pyopencl as cl

    dev = require("opencl")
    from xdev.backends.opencl.discovery import PROBE_SOURCE

    from xdev.backends.opencl.kernels import build_program

    def real_build(name, options):
        return build_program(dev.ctx, dev.key, name, options)

    calls = []

    def program(name, options):
        if "XDEV_FRESH_BUILD" in options:  # the rebuild under other options works
            calls.append(f"fresh {options['XDEV_FRESH_BUILD']}")
            return real_build(name, options)
        calls.append("cached")
        return cl.Program(dev.ctx, PROBE_SOURCE).build()  # has no kernel "fill"

    monkeypatch.setattr(dev, "program", program)
    opts = {"REAL_BITS": 32, "IN_BITS": 32, "OUT_BITS": 32, "XDEV_TEST_STALE": 1}
    k = dev.kernel("copy.cl", "fill", opts)
    assert calls == ["cached", "fresh 1"] and k.function_name == "fill"


# -- the device proof -------------------------------------------------------------------------
def _first_candidate_code() -> str:
    return ("from xdev.backends.opencl import discovery as d\n"
            "c = d.candidates()[0]\n"
            "print('REASON', d.unusable_reason(c))\n")


def test_proof_survives_a_child_that_aborts(tmp_path):
    """A real child process with an injected abort (what an LLVM 'Cannot select' does):
    the device is reported unusable with the reason and the fix; the caller lives on."""
    require("opencl")
    r = run_child(_first_candidate_code(), XDEV_CACHE_DIR=str(tmp_path), XDEV_OPENCL_PROOF_FAULT="abort")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "REASON opencl:0:0" in out and "check process died (exit -6)" in out, out
    assert "apt-get install pocl-opencl-icd" in out
    # The verdict is cached: a second process does not prove again (no fault hook now,
    # yet the cached failure is what it reports).
    r2 = run_child(_first_candidate_code(), XDEV_CACHE_DIR=str(tmp_path))
    assert "check process died" in r2.stdout, r2.stdout + r2.stderr[-2000:]


def _fake_cand():
    class Dev:
        name = "Fake CPU"
        driver_version = "1.0"

    class Plat:
        name = "Fake Platform"
        version = "OpenCL 3.0 Fake 1.0"

    class Cand:
        p, d, key, label = 0, 0, "opencl:0:0", "Fake CPU (Fake 1.0)"
        device, platform = Dev(), Plat()

    return Cand()


def test_a_proof_holds_only_for_the_pocl_code_generation_it_ran_under(tmp_path, monkeypatch):
    """A verdict proven with PoCL's work-group specialization off (the test suite's setting) is
    not reused by a process with it on, or with other code generation variables."""
    from xdev.backends.opencl import proof

    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    tried = []
    monkeypatch.setattr(proof, "run_child", lambda cand, vw, first: tried.append(vw))
    params = {"gemm": {"VW": 8, "VWD": 4}, "conv": {"VW": 8, "VWD": 4}}
    settings = [("POCL_WORK_GROUP_SPECIALIZATION", "0"), ("POCL_WORK_GROUP_SPECIALIZATION", "1"),
                ("POCL_WORK_GROUP_METHOD", "cbs"), ("POCL_EXTRA_BUILD_FLAGS", "-O1")]
    for name, value in settings:
        for n in ("POCL_WORK_GROUP_SPECIALIZATION", "POCL_WORK_GROUP_METHOD", "POCL_EXTRA_BUILD_FLAGS"):
            monkeypatch.delenv(n, raising=False)
        monkeypatch.setenv(name, value)
        for _ in range(2):  # the second from the cache
            assert proof.prove(_fake_cand(), "cpu", params) == (8, None)
    assert len(tried) == len(settings)
    assert len(list((tmp_path / "opencl-proof").glob("*.json"))) == len(settings)


def test_proof_falls_back_to_a_narrower_vector_width(tmp_path, monkeypatch):
    from xdev.backends.opencl import proof

    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    tried = []

    def child(cand, vw, first):
        tried.append(vw)
        return "vector width 16: the check process died (exit -6): LLVM ERROR: Cannot select" if vw == 16 else None

    monkeypatch.setattr(proof, "run_child", child)
    params = {"gemm": {"VW": 16, "VWD": 8}, "conv": {"VW": 16, "VWD": 8}}
    assert proof.prove(_fake_cand(), "cpu", params) == (8, None)
    assert tried == [16, 8]
    assert proof.prove(_fake_cand(), "cpu", params) == (8, None)  # cached: no child
    assert tried == [16, 8]
    files = list((tmp_path / "opencl-proof").glob("*.json"))
    assert len(files) == 1
    # A damaged or foreign verdict file is not trusted: named in a warning, the device is proven again.
    doc = json.loads(files[0].read_text())
    foreign = {**doc, "data": {**doc["data"], "identity": {**doc["data"]["identity"], "driver": "2.0"}}}
    for bad in (b"{", b"[]", json.dumps({"ok": True, "vw": 3, "reason": ""}).encode(), b'{"\xff": 1}',
                b"[" * 100000 + b"]" * 100000, json.dumps(foreign).encode()):
        files[0].write_bytes(bad)
        tried.clear()
        json_store._warned.clear()  # (one warning per file and problem and process)
        with pytest.warns(RuntimeWarning, match="ignoring .* in the OpenCL proof cache " + str(files[0])):
            assert proof.prove(_fake_cand(), "cpu", params) == (8, None)
        assert tried == [16, 8]
    # All widths fail: unusable, with the first error and the fix.
    monkeypatch.setattr(proof, "run_child", lambda cand, vw, first: f"vector width {vw}: LLVM ERROR")
    vw, why = proof.prove(_fake_cand(), "gpu", params)
    assert vw is None and "vector width 16: LLVM ERROR" in why and "pocl-opencl-icd" in why
    # ... and that deterministic verdict is cached; a hang on a busy machine is not.
    calls = []
    monkeypatch.setattr(proof, "run_child", lambda cand, vw, first: calls.append(vw) or "x: LLVM ERROR")
    assert proof.prove(_fake_cand(), "gpu", params)[0] is None and calls == []
    hung = lambda cand, vw, first: calls.append(vw) or (f"vector width {vw}: hung (no progress for 60 s)" if vw > 4
                                                        else "vector width 4: the check process died (exit -9): no output")
    monkeypatch.setattr(proof, "run_child", hung)
    for f in (tmp_path / "opencl-proof").glob("*.json"):
        f.unlink()
    for _ in range(2):  # proven again each time
        assert proof.prove(_fake_cand(), "cpu", params)[0] is None
    assert calls == [16, 8, 4, 16, 8, 4]


def test_proof_with_an_unwritable_cache_warns_once_and_keeps_the_verdict(tmp_path, monkeypatch):
    """An unwritable XDEV_CACHE_DIR (a read-only mount) cost a silent proof (17-22 s) per device
    and use; now one warning says why and how to fix it, and the process proves each device once."""
    from xdev.backends.opencl import proof

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDEV_CACHE_DIR", str(blocker / "sub"))  # a folder below a file: unwritable, even for root
    monkeypatch.setattr(proof, "_unwritten", {})
    monkeypatch.setattr(proof, "_warned_unwritable", set())
    runs = []
    monkeypatch.setattr(proof, "run_child", lambda cand, vw, first: runs.append(vw))
    params = {"gemm": {"VW": 8, "VWD": 4}, "conv": {"VW": 8, "VWD": 4}}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(3):
            assert proof.prove(_fake_cand(), "cpu", params) == (8, None)
    msgs = [str(x.message) for x in w]
    assert runs == [8]
    assert len(msgs) == 1 and "cannot write the OpenCL proof cache" in msgs[0] and "XDEV_CACHE_DIR" in msgs[0]


def test_proof_step_limit_adapts_to_the_steps_seen(monkeypatch):
    """Unless XDEV_OPENCL_PROOF_TIMEOUT fixes it, a hang is declared after 10x the slowest
    finished step (15 s at least, 60 s at most, 60 s before any step): a fresh machine no
    longer waits 60 s for each hanging width of a driver whose steps take a second."""
    from xdev.backends.opencl import proof
    from xdev.contract import env

    assert proof.step_limit(None, None) == env.DEFAULT_OPENCL_PROOF_TIMEOUT == 60.0
    assert [proof.step_limit(s, None) for s in (0.2, 3.0, 30.0)] == [15.0, 30.0, 60.0]
    assert proof.step_limit(0.2, 120.0) == proof.step_limit(None, 120.0) == 120.0
    monkeypatch.delenv(env.OPENCL_PROOF_TIMEOUT, raising=False)
    assert env.opencl_proof_timeout() is None
    monkeypatch.setenv(env.OPENCL_PROOF_TIMEOUT, "90")
    assert env.opencl_proof_timeout() == 90.0
    monkeypatch.setenv(env.OPENCL_PROOF_TIMEOUT, "soon")
    with pytest.raises(ValueError, match="XDEV_OPENCL_PROOF_TIMEOUT='soon' is not a number of seconds"):
        env.opencl_proof_timeout()


def test_proof_child_that_stops_making_progress_is_killed_at_the_adapted_limit(monkeypatch):
    import time

    from xdev.backends.opencl import proof

    monkeypatch.setattr(proof, "STEP_FLOOR_S", 0.5)
    child = [sys.executable, "-c", "import time\nfor s in 'ab':\n    print('XDEV-PROOF-STEP', s, flush=True)\n"
                                   "    time.sleep(0.01)\ntime.sleep(60)"]
    t0 = time.monotonic()
    code, out, err, hung = proof._run(child, {}, None)
    assert hung is not None and 0.5 <= hung < 5 and time.monotonic() - t0 < 20
    assert code != 0 and out.count("XDEV-PROOF-STEP") == 2
    code, out, err, hung = proof._run(child[:2] + ["print('XDEV-PROOF-STEP a', flush=True)"], {}, None)
    assert (code, hung) == (0, None)  # a child that finishes is not hung


def test_proof_child_checks_a_real_device(tmp_path):
    """The child itself (no fault): builds and runs every family and dtype, then says ok."""
    dev = require("opencl")
    c = dev.cand
    assert dev.params["gemm"]["VW"] in (2, 4, 8, 16)
    from xdev.backends.opencl import proof

    assert proof.run_child(c, dev.params["gemm"]["VW"], first=False) is None


def test_processes_proving_a_device_at_once_prove_it_once(tmp_path, monkeypatch):
    """Test workers or dask workers starting together on a fresh machine: one proves the device,
    the others wait for its verdict. (The lock is a file lock: threads stand in for processes.)"""
    import threading
    import time

    from xdev.backends.opencl import proof

    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    tried = []

    def child(cand, vw, first):
        tried.append(vw)
        time.sleep(0.5)
        return None

    monkeypatch.setattr(proof, "run_child", child)
    params = {"gemm": {"VW": 8, "VWD": 4}, "conv": {"VW": 8, "VWD": 4}}
    results = []
    threads = [threading.Thread(target=lambda: results.append(proof.prove(_fake_cand(), "cpu", params)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [(8, None)] * 3 and tried == [8]
    # A holder that keeps the claim past the wait (a proof stuck elsewhere): proven here instead.
    for f in (tmp_path / "opencl-proof").glob("*.json"):
        f.unlink()
    monkeypatch.setattr(proof, "CLAIM_WAIT_S", 0.2)
    with proof._verdict_file(proof.identity(_fake_cand(), "cpu", params)).claimed(1) as held:
        assert held
        assert proof.prove(_fake_cand(), "cpu", params) == (8, None)
    assert tried == [8, 8]


# -- tuning cache -----------------------------------------------------------------------------
@pytest.fixture
def tuning_env(tmp_path, monkeypatch):
    """An OpenCL device with a private tuning cache (the proof verdicts copied along)."""
    from availability import copy_proof_verdicts

    dev = require("opencl")
    from xdev.backends.opencl import params as tuning

    copy_proof_verdicts(tmp_path)
    monkeypatch.setenv("XDEV_CACHE_DIR", str(tmp_path))
    json_store._warned.clear()
    return dev, tuning, tmp_path / "opencl-tuning.json"


# Damaged files: not an object, truncated, invalid UTF-8, nested past the parser's recursion limit.
DAMAGED = [b"[1]", b"null", b"{", b'"x"', b'{"xdev": "opencl-tuning", "version": 1, "da', b'{"\xff\xfe": {}}',
           b"[" * 100000 + b"]" * 100000, b'{"xdev": "opencl-tuning", "version": 99, "data": {}}']


@pytest.mark.parametrize("content", DAMAGED)
def test_tuning_cache_that_is_damaged_is_ignored_with_one_warning(tuning_env, content):
    dev, tuning, path = tuning_env
    path.write_bytes(content)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p1 = tuning.params_for(dev)
        p2 = tuning.params_for(dev)
    assert "tuned" not in p1 and p1 == p2
    msgs = [str(x.message) for x in w if "tuning cache" in str(x.message)]
    assert len(msgs) == 1 and str(path) in msgs[0] and "xdev.tune --reset" in msgs[0]


@pytest.mark.parametrize("entry", [
    {"gemm": {"MR": 0}}, {"gemm": {"MR": -3}}, {"gemm": {"MR": "8"}}, {"gemm": {"NV": 1000}},
    {"conv": {"VW": 3}}, {"gemm_gpu": {"TSM": 64, "WPTM": 3}}, {"small_work": -1}, {"gemm": 5},
    {"gemm": {"XX": 1}}, {"bogus": 1}, [1], "x",
])
def test_bad_tuning_entry_is_ignored_with_a_warning_naming_the_file(tuning_env, entry):
    dev, tuning, path = tuning_env
    path.write_text(json.dumps({tuning.device_id(dev): entry}))
    with pytest.warns(RuntimeWarning, match=r"ignoring .*" + str(path).replace(".", r"\.")):
        p = tuning.params_for(dev)
    assert "tuned" not in p and p["gemm"] == tuning.defaults(dev)["gemm"]


def test_tune_reset_always_works_and_writes_atomically(tuning_env):
    dev, tuning, path = tuning_env
    for content in DAMAGED + [json.dumps({tuning.device_id(dev): {"gemm": {"MR": 0}}, "other": {}}).encode()]:
        path.write_bytes(content)
        r = subprocess.run([sys.executable, "-m", "xdev.tune", "--reset", "--device", dev.key],
                           capture_output=True, text=True, timeout=300, env=child_env())
        assert r.returncode == 0, r.stderr[-2000:]
        data, problem = tuning.tuning_file().inspect()  # a sound file again
        assert problem is None and isinstance(data, dict) and tuning.device_id(dev) not in data
    assert data == {"other": {}}  # other devices' entries survive
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_tune_reset_without_device_forgets_the_default_device_only(tuning_env):
    """--reset is the default device's (the one `python -m xdev.tune` tunes), --reset --all every
    device's; with two OpenCL devices (two PoCLs) the other device's entry must survive the first."""
    dev, tuning, path = tuning_env
    from xdev.backends.opencl import discovery

    ids = {c.key: tuning.device_id(discovery._Shim(c)) for c in discovery.candidates()}
    # Empty entries: the devices' parameters stay the built-in ones, whose proof verdicts the
    # fixture copied (a tuned value would cost a fresh proof per device in the child).
    path.write_text(json.dumps({**{i: {} for i in ids.values()}, "other": {}}))
    env = child_env()
    env.pop("PYOPENCL_CTX", None)
    r = subprocess.run([sys.executable, "-m", "xdev.tune", "--reset"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # The default device is the one a bare "opencl" opens in a fresh process like the reset's.
    default = subprocess.run([sys.executable, "-c", "import xdev; print(xdev.asarray([1.0], backend='opencl').device)"],
                             capture_output=True, text=True, timeout=300, env=env).stdout.strip()
    left = tuning.load_all()
    assert ids[default] not in left and f"forgot tuned parameters of {default} " in r.stdout
    assert set(left) == {i for k, i in ids.items() if k != default} | {"other"}
    r = subprocess.run([sys.executable, "-m", "xdev.tune", "--reset", "--all"], capture_output=True,
                       text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert tuning.load_all() == {"other": {}}
    assert all(f"forgot tuned parameters of {k} " in r.stdout for k in ids)
    r = subprocess.run([sys.executable, "-m", "xdev.tune", "--all"], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 2 and "--all goes with --reset" in r.stderr


def test_tune_help_says_what_reset_forgets():
    r = subprocess.run([sys.executable, "-m", "xdev.tune", "--help"], capture_output=True, text=True,
                       timeout=120, env=child_env())
    text = " ".join(r.stdout.split())
    assert r.returncode == 0
    assert "--reset forget the tuned parameters of the device --device selects (default: the default device)" in text
    assert "--all with --reset: of every device --device matches (without --device: every OpenCL device)" in text


def test_tune_with_an_unusable_cache_dir_fails_before_measuring(tmp_path):
    require("opencl")
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = subprocess.run([sys.executable, "-m", "xdev.tune", "--quick"], capture_output=True, text=True,
                       timeout=300, env=child_env(XDEV_CACHE_DIR=str(blocker / "sub")))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "cannot be written" in r.stderr and "XDEV_CACHE_DIR" in r.stderr
    assert "tuning opencl" not in r.stdout  # nothing was measured




def test_queued_work_ends_before_the_process_exits():
    # A process that exits with kernels still queued on PoCL crashed now and then (SIGSEGV in
    # LLVM: PoCL's worker thread compiling a kernel while the exit handlers unload the
    # libraries; about 1 exit in 40 under load). The device finishes its queue at exit: a
    # handler registered before the device (atexit runs last-in first-out) sees every
    # command complete.
    dev = require("opencl")
    code = f"""
import atexit, numpy as np, pyopencl as cl, xdev
last = []
def check():
    ev = last[0]
    print("status", "complete" if ev.command_execution_status == cl.command_execution_status.COMPLETE else "pending",
          flush=True)
atexit.register(check)
w = xdev.asarray(np.ones((64, 64, 3, 3), np.float32), backend={dev.key!r})
x = xdev.asarray(np.ones((8, 64, 64, 64), np.float32), backend={dev.key!r})
for _ in range(12):
    y = xdev.conv2d(x, w, padding=1)
last.append(cl.enqueue_marker(w._dev.queue))
"""
    r = run_child(code, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert "status complete" in r.stdout, r.stdout


def test_devices_are_proven_side_by_side(monkeypatch):
    """A fresh machine's first call proves every OpenCL device: the proofs (child processes)
    run at once, one thread each, not one after another; a device already checked is not
    checked again."""
    import threading
    import time

    from xdev.backends.opencl import discovery

    monkeypatch.setattr(discovery, "_usable", {"opencl:9:0": None})
    running, peak, lock = [0], [0], threading.Lock()

    def fake_reason(c):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.5)
        with lock:
            running[0] -= 1
        discovery._usable[c.key] = None
        return None

    monkeypatch.setattr(discovery, "unusable_reason", fake_reason)
    cands = []
    for p in range(3):
        c = _fake_cand()
        c.p, c.key = p, f"opencl:{p}:0"
        cands.append(c)
    done = _fake_cand()
    done.key = "opencl:9:0"
    discovery.check_all([*cands, done])
    assert peak[0] == 3
    assert set(discovery._usable) == {"opencl:0:0", "opencl:1:0", "opencl:2:0", "opencl:9:0"}
