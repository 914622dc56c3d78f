"""The fork rule: a driver opened before fork() is refused in the child with a message naming
the spawn start method (OpenCL used to block forever there); the numpy backend keeps working,
and a child whose parent never opened the driver opens its own.

Each case runs a multiprocessing fork Pool inside a child process with timeouts, so a hang
fails the test instead of stopping the suite.
"""
from __future__ import annotations

import json
import os
import textwrap

import pytest

from availability import require
from child import run_child

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = """
import json, multiprocessing as mp, signal, sys
sys.path.insert(0, {tests!r})
import numpy as np
{fake}
import xdev
from xdev.contract import BackendUnavailable

h = np.arange(16, dtype=np.float32).reshape(4, 4)
{parent}

def attempt(fn):
    try:
        fn()
        return "ok"
    except BackendUnavailable as e:
        return "refused: " + str(e)
    except Exception as e:
        return f"{{type(e).__name__}}: {{e}}"

def in_child():
    signal.alarm({alarm})  # a hang ends this worker, not the test run
    out = {{name: attempt(fn) for name, fn in CHECKS.items()}}
    status = xdev.available_backends()[BACKEND]
    out["available_backends"] = "available" if status.available else "unavailable: " + status.reason
    out["numpy backend"] = attempt(lambda: np.testing.assert_array_equal(xdev.matmul(h, h).numpy(), h @ h))
    out["synchronize()"] = attempt(xdev.synchronize)
    return out

with mp.get_context("fork").Pool(1) as pool:
    print(json.dumps(pool.apply_async(in_child).get(timeout={alarm} + 30)))
"""


def _in_fork_child(backend: str, parent: str, checks: str, *, fake_cupy: bool = False, alarm: int = 60) -> dict:
    code = SCRIPT.format(
        tests=TESTS, alarm=alarm,
        fake="import fake_cupy; fake_cupy.install()" if fake_cupy else "",
        parent=f"BACKEND = {backend!r}\n" + textwrap.dedent(parent) + "\n" + textwrap.dedent(checks),
    )
    out = run_child(code, timeout=alarm + 300)  # (the parent part may prove a device: tens of seconds)
    assert out.returncode == 0, f"the fork child hung or failed:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_refused(results: dict, names: list[str], backend: str) -> None:
    for name in names:
        msg = results[name]
        assert msg.startswith(("refused: ", "unavailable: ")), (name, msg)
        assert f"the {backend} backend cannot be used in this process: it was started by fork()" in msg, msg
        assert "'spawn'" in msg and "get_context('spawn')" in msg and "numpy backend works" in msg, msg
    assert results["numpy backend"] == "ok", results
    assert results["synchronize()"] == "ok", results


INHERITED = """
a = xdev.asarray(h, backend=BACKEND)
b = a @ a
"""
INHERITED_CHECKS = """
CHECKS = {
    "download an inherited array": lambda: a.numpy(),
    "compute with inherited arrays": lambda: xdev.matmul(a, b),
    "upload to the inherited device": lambda: xdev.asarray(h, backend=BACKEND),
    "synchronize the inherited device": lambda: xdev.synchronize(BACKEND),
}
"""


def test_opencl_in_a_fork_child_is_refused_not_hung():
    require("opencl")
    r = _in_fork_child("opencl", INHERITED, INHERITED_CHECKS)
    _assert_refused(r, ["download an inherited array", "compute with inherited arrays",
                        "upload to the inherited device", "synchronize the inherited device",
                        "available_backends"], "opencl")


def test_opencl_device_first_opened_in_a_fork_child_is_refused():
    # The parent only enumerated the devices: the child opens one for the first time.
    require("opencl")
    r = _in_fork_child("opencl", "xdev.available_backends()",
                       'CHECKS = {"open a device": lambda: xdev.asarray(h, backend="opencl").numpy()}')
    _assert_refused(r, ["open a device", "available_backends"], "opencl")


def test_opencl_works_in_a_fork_child_of_a_process_that_never_opened_it():
    require("opencl")
    r = _in_fork_child("opencl", "xdev.matmul(h, h)",
                       'CHECKS = {"open a device": lambda: xdev.asarray(h, backend="opencl").numpy()}', alarm=300)
    assert r == {"open a device": "ok", "available_backends": "available", "numpy backend": "ok",
                 "synchronize()": "ok"}, r


@pytest.mark.parametrize("opened_in_parent", [True, False])
def test_cuda_follows_the_same_rule(opened_in_parent):
    # CUDA fails rather than hangs after fork(); the rule and its message are the same, checked
    # here against the fake CuPy (the real one on a GPU machine behaves the same in the child).
    # (The fake has no cuBLAS: the parent uploads but does not compute.)
    parent = INHERITED.replace("a @ a", "xdev.asarray(h, backend=BACKEND)") if opened_in_parent else "c = None"
    checks = INHERITED_CHECKS if opened_in_parent else 'CHECKS = {"upload": lambda: xdev.asarray(h, backend="cuda").numpy()}'
    r = _in_fork_child("cuda", parent, checks, fake_cupy=True)
    if opened_in_parent:
        _assert_refused(r, ["download an inherited array", "compute with inherited arrays",
                            "upload to the inherited device", "synchronize the inherited device",
                            "available_backends"], "cuda")
    else:
        assert r == {"upload": "ok", "available_backends": "available", "numpy backend": "ok",
                     "synchronize()": "ok"}, r


def test_cuda_on_a_gpu_in_a_fork_child_is_refused():
    require("cuda")  # the real CuPy and driver (skipped without a GPU)
    r = _in_fork_child("cuda", INHERITED, INHERITED_CHECKS)
    _assert_refused(r, ["download an inherited array", "compute with inherited arrays",
                        "upload to the inherited device", "synchronize the inherited device",
                        "available_backends"], "cuda")
