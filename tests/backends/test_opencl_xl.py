"""The GPU kernel family's xl GEMM/conv under other parameter sets than the default, its
search space, and CLBlast beside it. Runs on any OpenCL device: the kernels are plain
OpenCL C, so PoCL on the CPU proves them (the family is forced, as XDEV_OPENCL_KERNELS=gpu
does)."""
from __future__ import annotations

import numpy as np
import pytest

import xdev
from availability import require
from reference import conv2d_ref, matmul_ref
from strategies import supported_dtypes, transposed_at_strided, values
from tolerance import assert_agrees

# Unlike the defaults (float4 loads, square tiles, two buffers): odd widths 1 and 2 and 8,
# non-square tiles and work-groups, padding, one local buffer, deep and shallow K slices.
PARAMS = [
    {"MWG": 32, "NWG": 64, "KWG": 8, "MDIMC": 8, "NDIMC": 8, "VWM": 1, "VWN": 2, "PAD": 2, "DB": 0},
    {"MWG": 64, "NWG": 32, "KWG": 32, "MDIMC": 16, "NDIMC": 4, "VWM": 2, "VWN": 8, "PAD": 8, "DB": 1},
]


@pytest.fixture(scope="module")
def cl_dev():
    return require("opencl")


@pytest.fixture(params=range(len(PARAMS)), ids=["vw1x2-pad-onebuf", "vw2x8-deepk"])
def xl_params(request, cl_dev):
    """Force the xl kernels with one PARAMS entry for GEMM and conv (restored afterwards)."""
    keys = ("gemm_xl", "conv_xl", "small_work", "xl_work")
    saved = cl_dev.family, {k: cl_dev.params[k] for k in keys}
    t = PARAMS[request.param]
    cl_dev.family = "gpu"
    cl_dev.params.update(gemm_xl=dict(t), conv_xl=dict(t), small_work=0, xl_work=0)
    yield t
    cl_dev.family = saved[0]
    cl_dev.params.update(saved[1])


def check(dev, a, b, xa, xb, what):
    y = xdev.matmul(xa, xb)
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(y.numpy(), ref, ref_abs, a.shape[-1], dev.acc_dtype(a.dtype), a.dtype, what)


def test_xl_gemm_other_parameters(cl_dev, xl_params):
    t = xl_params
    for M, N, K in [(t["MWG"] + 1, t["NWG"] - 1, t["KWG"] + 1), (1, 70, 3), (97, 1, 2 * t["KWG"])]:
        a, b = values(M, (M, K), np.float32), values(N, (K, N), np.float32)
        check(cl_dev, a, b, xdev.asarray(a, backend=cl_dev.key), xdev.asarray(b, backend=cl_dev.key), f"{t} {M}x{K}x{N}")
    for dt in supported_dtypes(cl_dev):  # transposed, strided and broadcast batch views; fp16/fp64
        a, b, xa, xb = transposed_at_strided(dt, cl_dev.key)
        check(cl_dev, a, b, xa, xb, f"{t} {np.dtype(dt)} transposed @ strided")
    a, b = values(4, (2, 1, 5, 7), np.float32), values(5, (1, 3, 7, 4), np.float32)
    check(cl_dev, a, b, xdev.asarray(a, backend=cl_dev.key), xdev.asarray(b, backend=cl_dev.key), f"{t} broadcast")


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", [
    ((2, 5, 13, 17), (13, 5, 3, 3), 1, 1, 1, 1),
    ((1, 6, 20, 21), (8, 3, 5, 3), (2, 3), (2, 0), (1, 2), 2),
])
def test_xl_conv_other_parameters(cl_dev, xl_params, xs, ws, stride, padding, dilation, groups):
    for dt in supported_dtypes(cl_dev):
        x, w, b = values(1, xs, dt), values(2, ws, dt), values(3, (ws[0],), dt)
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
        y = xdev.conv2d(xdev.asarray(x, backend=cl_dev.key), xdev.asarray(w, backend=cl_dev.key),
                        xdev.asarray(b, backend=cl_dev.key), algorithm="gemm", **kw)
        ref, ref_abs = conv2d_ref(x, w, b, **kw)
        assert_agrees(y.numpy(), ref, ref_abs, ws[1] * ws[2] * ws[3] + 1, cl_dev.acc_dtype(dt), dt,
                      f"{xl_params} {np.dtype(dt)} {xs} {ws}")


def test_xl_conv_input_with_inf_only_spreads_where_it_should(cl_dev, xl_params):
    """The K padding of the gathered operand must be zeros, not whatever lies in memory: an
    inf in the input may only reach the outputs whose window covers it."""
    x = values(1, (1, 3, 9, 9), np.float32)
    x[0, 2, 8, 8] = np.inf
    w = np.abs(values(2, (4, 3, 3, 3), np.float32))
    y = xdev.conv2d(xdev.asarray(x, backend=cl_dev.key), w, padding=1).numpy()
    assert np.isinf(y[0, :, 7:, 7:]).all() and np.isfinite(y[0, :, :7, :]).all() and np.isfinite(y[0, :, :, :7]).all()


def test_search_space_is_valid_and_matches_the_kernel(cl_dev):
    from xdev.backends.opencl import autotune as tune
    from xdev.backends.opencl.gemm import xl_valid

    d = cl_dev.cl_device
    shapes = tune.xl_shapes(cl_dev)
    assert shapes and all(xl_valid(t, int(d.max_work_group_size), int(d.local_mem_size)) for t in shapes)
    assert {(t["MWG"], t["NWG"]) for t in shapes} >= {(128, 128), (64, 64)}
    for step in tune.XL_STEPS:
        for t in tune.xl_neighbours(cl_dev, shapes[0], step):
            assert sum(t[k] != shapes[0][k] for k in t) in (1, 2) and xl_valid(t, 1 << 30, 1 << 30)
    bad = {**shapes[0], "VWM": 8, "MDIMC": 32}  # 4 rows per work-item cannot hold 8-wide vectors
    assert not xl_valid(bad, 1 << 30, 1 << 30)
    with pytest.raises(xdev.KernelBuildError, match="xl tile parameters"):
        cl_dev.program("gemm_xl.cl", {"REAL_BITS": 32, "IN_BITS": 32, "OUT_BITS": 32, **bad})


def test_wide_types_shrink_to_the_local_memory(cl_dev, monkeypatch):
    from xdev.backends.opencl.gemm import xl_local_bytes, xl_options

    big = {"MWG": 128, "NWG": 128, "KWG": 32, "MDIMC": 16, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}

    class Small:  # NVIDIA's 48 KiB
        cl_device = type("D", (), {"local_mem_size": 48 * 1024})()

    t32, t64 = xl_options(Small, big, np.float32), xl_options(Small, big, np.float64)
    assert xl_local_bytes(t32, 4) <= 48 * 1024 and xl_local_bytes(t64, 8) <= 48 * 1024
    assert t32["DB"] == 0 and t32["KWG"] == 32 and t64["KWG"] == 16  # one buffer first, then a shallower slice


def test_search_keeps_the_fastest_verified_candidate_within_the_budget(cl_dev, monkeypatch):
    import time

    from xdev.backends.opencl import autotune as tune

    saved = cl_dev.family, dict(cl_dev.params)
    good, broken = dict(PARAMS[0]), dict(PARAMS[1])
    monkeypatch.setattr(tune, "xl_shapes", lambda dev: [broken, good])
    monkeypatch.setattr(tune, "XL_STEPS", [])
    try:
        cl_dev.family = "gpu"
        cl_dev.params.update(small_work=0, xl_work=0)
        a = xdev.asarray(values(1, (40, 40), np.float32), backend=cl_dev.key)
        # "broken" fails verification (a stand-in for a miscompiled variant) and is skipped.
        verify = lambda dev: "wrong" if dev.params["gemm_xl"] == broken else None  # noqa: E731
        log: list[str] = []
        best = tune.search_xl(cl_dev, "gemm_xl", lambda: xdev.matmul(a, a), verify, 1,
                              time.monotonic() + 600, log.append)
        assert best == good and any("wrong results" in line for line in log)
        assert tune.search_xl(cl_dev, "gemm_xl", lambda: None, verify, 1, time.monotonic() - 1, log.append) is None
        assert "time budget reached" in log[-1]
    finally:
        cl_dev.family = saved[0]
        cl_dev.params.clear()
        cl_dev.params.update(saved[1])


# ---- CLBlast beside xdev's kernels ----------------------------------------------------------
def _clblast_or_skip():
    from xdev.backends.opencl import clblast

    why = clblast.unavailable_reason()
    if why:
        pytest.skip(why)
    return clblast


@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_clblast_gemm_on_xdev_buffers(cl_dev, dt):
    clblast = _clblast_or_skip()
    if np.dtype(dt) not in supported_dtypes(cl_dev):
        pytest.skip(f"{cl_dev.key} lacks {np.dtype(dt)}")
    a, b = values(1, (67, 45), dt), values(2, (45, 33), dt)
    xa = xdev.asarray(np.ascontiguousarray(a.T), backend=cl_dev.key).mT  # column-major: CLBlast transposes
    big = values(3, (50, 40), dt)
    big[2:47, 1:34] = b
    xb = xdev.asarray(big, backend=cl_dev.key)[2:47, 1:34]  # an offset and a leading dimension
    y = cl_dev.download(clblast.gemm(cl_dev, xa._data, xb._data))
    ref, ref_abs = matmul_ref(a, b)
    assert_agrees(y, ref, ref_abs, 45, cl_dev.acc_dtype(np.dtype(dt)), np.dtype(dt), "clblast")
    with pytest.raises(ValueError, match="one unit stride"):
        clblast.gemm(cl_dev, xdev.asarray(big, backend=cl_dev.key)[::2, ::2]._data, xb[:20]._data)


def test_clblast_missing_library_is_a_reason_not_a_crash(monkeypatch):
    from xdev.backends.opencl import clblast

    monkeypatch.setenv(clblast.ENV_LIB, "/nonexistent/libclblast.so")
    clblast._load.cache_clear()
    try:
        why = clblast.unavailable_reason()
        assert why and "/nonexistent/libclblast.so" in why and "libclblast1" in why
    finally:
        monkeypatch.delenv(clblast.ENV_LIB)
        clblast._load.cache_clear()


def test_bench_adds_a_clblast_row(cl_dev):
    _clblast_or_skip()
    from xdev.bench.clblast_rows import clblast_row
    from xdev.bench.run import Settings

    row = clblast_row(cl_dev, Settings(np.dtype(np.float32), 0.0, 1), 64, 64, 64)
    assert row["algorithm"] == "clblast" and row["backend"] == "opencl" and row["gflops"] > 0


def test_narrow_layers_get_half_height_tiles(cl_dev):
    """VGG-16's 64-channel layers on 128-row tiles: half the rows, twice the pixel columns,
    same work-group size; a layer with more channels keeps the tuned tile."""
    from xdev.backends.opencl.conv import narrow

    big = {"MWG": 128, "NWG": 128, "KWG": 16, "MDIMC": 16, "NDIMC": 16, "VWM": 4, "VWN": 4, "PAD": 0, "DB": 1}
    if cl_dev.cl_device.max_work_group_size < 256 or cl_dev.cl_device.local_mem_size < 40 * 1024:
        pytest.skip("the device cannot hold the 128 x 128 example")
    n = narrow(cl_dev, big, 64, 4)
    assert (n["MWG"], n["NWG"], n["MDIMC"], n["NDIMC"]) == (64, 256, 8, 32)
    assert narrow(cl_dev, big, 65, 4) == big
