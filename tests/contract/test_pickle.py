"""Pickling and copying: arrays go by value, devices by name (to the receiving process's own
device), so a copy combines with every other array of that device."""
from __future__ import annotations

import copy
import pickle

import numpy as np

import xdev
from child import run_child
from strategies import values


def test_device_copies_and_unpickles_to_the_same_device(device):
    assert pickle.loads(pickle.dumps(device)) is device
    assert copy.copy(device) is device
    assert copy.deepcopy(device) is device
    assert copy.deepcopy({"dev": device})["dev"] is device


def test_array_pickles_by_value_and_combines(device):
    host = values(1, (4, 6), np.float32)
    a = xdev.asarray(host, backend=device.key)
    for view in (a, a.T, a[1:, ::2]):
        b = pickle.loads(pickle.dumps(view))
        assert b.device == device.key and b._dev is device
        np.testing.assert_array_equal(b.numpy(), view.numpy())
    b = pickle.loads(pickle.dumps(a.T))
    np.testing.assert_allclose((a @ b).numpy(), host @ host.T, rtol=1e-5)
    y = xdev.conv2d(xdev.asarray(values(2, (1, 2, 5, 5), np.float32), backend=device.key),
                    values(3, (3, 2, 3, 3), np.float32))
    assert pickle.loads(pickle.dumps(y)).algorithm == y.algorithm


def test_copy_and_deepcopy_are_new_data_on_the_same_device(device):
    host = values(4, (3, 5), np.float32)
    a = xdev.asarray(host, backend=device.key)
    for c in (copy.copy(a), copy.deepcopy(a), copy.deepcopy([a, a])[0]):
        assert c._dev is device and c.data is not a.data
        np.testing.assert_array_equal(c.numpy(), host)
        np.testing.assert_allclose((c @ a.T).numpy(), host @ host.T, rtol=1e-5)
    if device.backend == "numpy":  # the copy has its own memory
        c = copy.deepcopy(a)
        a.data[0, 0] = 42.0
        assert c.numpy()[0, 0] == host[0, 0]


def test_arrays_round_trip_through_spawned_processes():
    # The worker unpickles an Array on its own numpy device, computes with it, and pickles
    # the result back; the parent combines that result with its own arrays. In a child
    # process: a spawn pool must not outlive a failing test.
    code = (
        "import multiprocessing as mp, numpy as np, xdev\n"
        "a = xdev.asarray(np.arange(12.0).reshape(3, 4))\n"
        "with mp.get_context('spawn').Pool(1) as pool:\n"
        "    r = pool.apply(xdev.matmul, (a, a.T))\n"
        "assert r._dev is a._dev, (r._dev, a._dev)\n"
        "h = np.arange(12.0).reshape(3, 4)\n"
        "np.testing.assert_allclose((r @ a).numpy(), h @ h.T @ h)\n"
        "print('ok')\n"
    )
    out = run_child(code, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
